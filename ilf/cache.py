"""The caching baseline (paper Sec. 2.2, Fig. 6; METHOD.md "The caching baseline").

Every block in the cached set C runs on steps `s % k == 0` and stores its residual
`delta = output - input` (per sample, so a classifier-free-guidance batch is fine); on the other
steps it returns `input + delta` without being called, so it costs no block forward.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backbones import Prepared
from .config import CacheConfig, cached_block_indices
from .context import StepContext


class CacheMethod:
    """Runs one transformer call, reusing cached block residuals on the steps in between recomputes."""

    name = "cache"

    def __init__(self, config: CacheConfig, num_blocks: int):
        self.config = config
        self.cached = frozenset(cached_block_indices(config, num_blocks))
        self.deltas: dict[int, torch.Tensor] = {}
        self.calls = 0  # step counter for calls outside a scheduler-driven run

    def start_run(self, ctx: StepContext) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all cached residuals (start of every sampling run)."""
        self.deltas = {}
        self.calls = 0

    def __call__(self, adapter: Any, model: nn.Module, prep: Prepared, ctx: StepContext | None):
        step = ctx.step_index if ctx is not None else self.calls
        self.calls = step + 1
        recompute = step % self.config.interval == 0
        cond = adapter.cond(model, prep, prep.timestep)
        h = prep.hidden
        for i, block in enumerate(model.transformer_blocks):
            if i not in self.cached:
                h = adapter.block(model, block, h, prep, cond)
                continue
            delta = self.deltas.get(i)
            if recompute or delta is None or delta.shape != h.shape:
                out = adapter.block(model, block, h, prep, cond)
                self.deltas[i] = (out - h).detach()
                h = out
            else:
                h = h + delta  # cached: no block forward
        return adapter.head(model, h, prep, cond)
