"""The methods every backbone x method x dtype test runs: one place, name -> attach(pipe).

Each entry attaches one method to a stock pipeline (tests/tiny.py, 4 blocks) and returns the transformer;
"baseline" attaches nothing. Helpers adding peer methods add one entry here.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

import ilf
from ilf import CacheConfig, FeedbackConfig


def _ilf(pipe: Any) -> Any:
    model = ilf.apply_feedback(pipe, FeedbackConfig(1, 2, "all", t_post="rescale"))
    with torch.no_grad():
        model.ilf_scales.copy_(torch.tensor([0.3, -0.2]))  # nonzero, so the feedback path counts
    return model


METHODS: dict[str, Callable[[Any], Any]] = {
    "baseline": lambda pipe: pipe.transformer,
    "ilf": _ilf,
    "cache": lambda pipe: ilf.apply_cache(pipe, CacheConfig("inner", 2, 2)),
    # peers: "name": lambda pipe: ...,
}
