"""Small helpers shared by the metric modules: device choice, batching, grouped means."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch

from ilf.errors import ILFConfigError

T = TypeVar("T")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` -> CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def batches(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `batch_size` items."""
    if batch_size < 1:
        raise ILFConfigError("batch_size", batch_size, "an integer >= 1")
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


def check_paths(image_paths: Sequence[str | Path], *others: tuple[str, Sequence]) -> list[Path]:
    """Paths as `Path`s; every other per-image list (name, values) must have the same length."""
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ValueError("image_paths is empty: no images to score")
    for name, values in others:
        if len(values) != len(paths):
            raise ValueError(f"{name} has {len(values)} entries but image_paths has {len(paths)}")
    return paths


def grouped_mean(values: np.ndarray, groups: Sequence) -> float:
    """Mean per group, then mean across groups (ImageReward's benchmark convention)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) != len(groups):
        raise ValueError(f"groups has {len(groups)} entries but values has {len(values)}")
    keys = {}
    for v, g in zip(values, groups):
        keys.setdefault(g, []).append(v)
    return float(np.mean([np.mean(v) for v in keys.values()]))
