"""Recording the order in which files reach the disk (fsync and rename calls), for the atomic-write tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


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
