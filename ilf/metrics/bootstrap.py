"""Seeded percentile bootstrap intervals for per-image metrics (deterministic for a given seed)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

N_BOOT, ALPHA = 1000, 0.05


def bootstrap_ci(values: np.ndarray, groups: Sequence | None = None, n_boot: int = N_BOOT, alpha: float = ALPHA,
                 seed: int = 0) -> tuple[float, float]:
    """95% (1 - alpha) percentile interval of the mean.

    With `groups` (e.g. prompt ids) the statistic is the mean of per-group means and whole groups
    are resampled (cluster bootstrap), matching ImageReward's per-prompt-then-global mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci: values is empty")
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, values.size, size=(n_boot, values.size))
        stats = values[idx].mean(axis=1)
    else:
        if len(groups) != values.size:
            raise ValueError(f"groups has {len(groups)} entries but values has {values.size}")
        keys = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        codes = np.array([keys[g] for g in groups])
        means = np.array([values[codes == k].mean() for k in range(len(keys))])
        idx = rng.integers(0, len(means), size=(n_boot, len(means)))
        stats = means[idx].mean(axis=1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
