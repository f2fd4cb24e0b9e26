"""Wall clocks with device synchronisation, and peak memory per run (CUDA allocator or CPU peak RSS)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

MIB = 1024 * 1024


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a wall clock measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of `fn()`, synchronised before and after (torch.cuda.synchronize on a GPU)."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, min and max of repeated runs."""
    if not seconds:
        raise ValueError("summarize needs at least one timing")
    return {"seconds_median": statistics.median(seconds), "seconds_min": min(seconds), "seconds_max": max(seconds)}


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def peak_memory_kind(device: torch.device) -> str:
    """What the peak-memory columns measure on this device."""
    if device.type == "cuda":
        return "cuda_max_memory_allocated"
    return "cpu_peak_rss" if _STATUS.exists() else "unavailable"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's statistic, or the process's peak RSS (Linux `clear_refs` 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory since the last reset, MiB: CUDA tensors allocated, or the process's peak RSS (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_average() -> str:
    """The 1/5/15-minute load average of the machine (CPUs are shared: say how busy it was)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
