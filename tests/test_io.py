"""Atomic writes reach the disk in order: the file's data, its rename, its folder; then whatever refers to it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ilf.io import append_jsonl, atomic_path, read_jsonl, write_bytes_atomic, write_json_atomic


@pytest.fixture
def disk_events(monkeypatch):
    """Every fsync (by the path its descriptor names) and every rename, in call order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(real):
        def call(src, dst, *args, **kwargs):
            events.append(("rename", f"{os.fspath(src)} -> {os.fspath(dst)}"))
            return real(src, dst, *args, **kwargs)
        return call

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file behind a descriptor")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", rename(real_replace))
    monkeypatch.setattr(os, "rename", rename(real_rename))
    return events


def renamed_onto(events: list[tuple[str, str]], target: Path) -> tuple[int, str]:
    """(event position, source) of the last rename onto `target`."""
    k = max(k for k, (kind, what) in enumerate(events) if kind == "rename" and what.endswith(f" -> {target}"))
    return k, events[k][1].split(" -> ")[0]


def flushed(events: list[tuple[str, str]], path: str, before: int) -> bool:
    """Whether `path`'s data was flushed before event `before`: directly, or as a file renamed onto it."""
    for k in range(before - 1, -1, -1):
        kind, what = events[k]
        if (kind, what) == ("fsync", path):
            return True
        if kind == "rename" and what.endswith(f" -> {path}"):
            src = what.split(" -> ")[0]
            return ("fsync", src) in events[:k]
    return False


def test_atomic_write_flushes_data_then_renames_then_flushes_the_folder(tmp_path, disk_events):
    target = tmp_path.resolve() / "sub" / "a.bin"
    write_bytes_atomic(target, b"payload")
    k, tmp = renamed_onto(disk_events, target)
    assert ("fsync", tmp) in disk_events[:k]  # the data is on the disk before the name points at it
    assert ("fsync", str(target.parent)) in disk_events[k + 1:]  # and the rename itself after
    assert target.read_bytes() == b"payload" and list(target.parent.iterdir()) == [target]


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_record_appended_after_a_file_lands_after_it(tmp_path, disk_events):
    root = tmp_path.resolve()
    write_json_atomic(root / "payload.json", {"x": 1})
    append_jsonl(root / "records.jsonl", {"path": "payload.json"})
    k, _ = renamed_onto(disk_events, root / "payload.json")
    folder = k + 1 + disk_events[k + 1:].index(("fsync", str(root)))
    record = disk_events.index(("fsync", str(root / "records.jsonl")))
    assert folder < record
    assert ("fsync", str(root)) in disk_events[record + 1:]  # a new records file: its folder entry too
    assert read_jsonl(root / "records.jsonl") == [{"path": "payload.json"}]
