"""Peer methods beyond the paper, attached and counted like ours: a dynamic first-block residual cache.

First-block cache (as diffusers' `apply_first_block_cache` / ParaAttention's FBCache): every step computes
the first `num_first_blocks` blocks; if their residual `r = h_k - h_0` changed little since the last step
that ran in full, relative L1 `mean|r - r_prev| / mean|r_prev| < threshold`, the remaining blocks are
skipped and their cached residual is added instead (`h_N = h_k + R_tail`). The first `warmup_steps` steps
always run in full. Whether a step is skipped depends on the features, so its block-forward count is
"dynamic": it is only known by counting at run time (`ilf.count_block_forwards`).

    from ilf.peers import FirstBlockCacheConfig, apply_first_block_cache
    apply_first_block_cache(pipe, FirstBlockCacheConfig(threshold=0.1, warmup_steps=2))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .attach import attach_method, resolve_target
from .backbones import Prepared
from .context import StepContext
from .errors import ILFConfigError


@dataclass
class FirstBlockCacheConfig:
    """A dynamic first-block residual cache (a peer method, not in the paper)."""

    threshold: float = 0.1  # relative L1 change of the first blocks' residual below which the rest is reused
    warmup_steps: int = 2  # steps at the start of a run that always compute every block
    num_first_blocks: int = 1  # blocks computed on every step (their residual decides)

    def validate(self, num_blocks: int | None = None) -> "FirstBlockCacheConfig":
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ILFConfigError("threshold", t, "a number >= 0 (0 = never reuse)")
        w = self.warmup_steps
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ILFConfigError("warmup_steps", w, "an integer >= 0")
        k = self.num_first_blocks
        limit = f"1..{num_blocks - 1}" if num_blocks is not None else "an integer >= 1"
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (num_blocks is not None and k >= num_blocks):
            raise ILFConfigError("num_first_blocks", k, limit)
        return self

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> str:
        """The analytic count: unknown before running (used by `ilf.expected_block_forwards`)."""
        self.validate(num_blocks)
        return "dynamic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FirstBlockCacheConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ILFConfigError(unknown[0], d[unknown[0]], f"a FirstBlockCacheConfig field: {sorted(known)}")
        return cls(**d).validate()


class FirstBlockCacheMethod:
    """One transformer call with the first-block cache; state is reset at step 0 of every sampling run."""

    name = "fbcache"

    def __init__(self, config: FirstBlockCacheConfig, num_blocks: int):
        self.config = config.validate(num_blocks)
        self.num_blocks = num_blocks
        self.reset()

    def start_run(self, ctx: StepContext) -> None:
        self.reset()

    def reset(self) -> None:
        self.head_residual: torch.Tensor | None = None  # first blocks' residual at the last full step
        self.tail_residual: torch.Tensor | None = None  # remaining blocks' residual at the last full step
        self.calls = 0
        self.skipped_steps: list[int] = []  # steps that reused the tail residual (for reports)

    def _reuse(self, step: int, residual: torch.Tensor) -> bool:
        prev = self.head_residual
        if step < self.config.warmup_steps or prev is None or self.tail_residual is None or prev.shape != residual.shape:
            return False
        change = (residual - prev).abs().mean() / prev.abs().mean()  # relative L1 (one device sync per step)
        return bool(change.item() < self.config.threshold)

    def __call__(self, adapter: Any, model: nn.Module, prep: Prepared, ctx: StepContext | None):
        step = ctx.step_index if ctx is not None else self.calls
        self.calls = step + 1
        blocks = model.transformer_blocks
        k = self.config.num_first_blocks
        cond = adapter.cond(model, prep, prep.timestep)
        h = prep.hidden
        for i in range(k):  # always computed
            h = adapter.block(model, blocks[i], h, prep, cond)
        head_residual = h - prep.hidden
        if self._reuse(step, head_residual):
            self.skipped_steps.append(step)
            return adapter.head(model, h + self.tail_residual, prep, cond)  # remaining blocks: cached residual
        h_k = h
        for i in range(k, len(blocks)):
            h = adapter.block(model, blocks[i], h, prep, cond)
        self.head_residual = head_residual.detach()
        self.tail_residual = (h - h_k).detach()
        return adapter.head(model, h, prep, cond)


def apply_first_block_cache(target: Any, config: FirstBlockCacheConfig | None = None, scheduler: Any = None) -> nn.Module:
    """Attach the first-block cache to a transformer or stock pipeline (like `apply_cache`); `ilf.remove` detaches it."""
    config = config if config is not None else FirstBlockCacheConfig()
    model, _ = resolve_target(target)
    method = FirstBlockCacheMethod(config, len(model.transformer_blocks))
    return attach_method(target, method, scheduler=scheduler)
