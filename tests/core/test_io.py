"""Atomic writes reach the disk in order: the file's data, its rename, its folder; then whatever refers to it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from disk import disk_events, flushed, renamed_onto  # noqa: F401 (fixture)
from ilf.io import append_jsonl, atomic_path, read_jsonl, write_bytes_atomic, write_json_atomic


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
