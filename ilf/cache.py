"""The caching baseline (paper Sec. 2.2, Fig. 6; METHOD.md "The caching baseline").

Every block in the cached set C runs on steps `s % k == 0` and stores its residual
`delta = output - input` (per sample, so a classifier-free-guidance batch is fine); on the other
steps it returns `input + delta` without being called, so it costs no block forward.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import Adapter, Prepared, adapter_blocks, add_states, detach_state, image_stream, model_blocks, sub_states
from .attach import as_config, check_free, install, resolve_target
from .config import CacheConfig, cached_block_indices
from .context import StepContext


CachePlan = tuple  # (recompute: bool, slot: int) -- slot = the call's index within its step (split guidance)


def cache_segments(cached: frozenset[int], num_blocks: int) -> tuple[tuple[bool, int, int], ...]:
    """The block loop as maximal runs `(cached?, first, end)`: each cached run is one stored residual."""
    segments: list[list] = []
    for i in range(num_blocks):
        flag = i in cached
        if segments and segments[-1][0] == flag:
            segments[-1][2] = i + 1
        else:
            segments.append([flag, i, i + 1])
    return tuple((bool(f), lo, hi) for f, lo, hi in segments)


class CacheMethod:
    """Runs one transformer call, reusing cached block residuals on the steps in between recomputes.

    A run of consecutive cached blocks i..j stores one residual `h_j_out - h_i_in`, which is the sum of
    their per-block residuals, so a reusing step adds it once. State is kept per call slot within a step:
    with guidance as two calls per step (cond, then uncond), each call reuses its own residuals, as the
    batched call does per sample. The host side (`plan`) decides recompute/reuse; the forward only follows it.
    """

    name = "cache"
    label = "the cache (ilf.apply_cache)"

    def __init__(self, config: CacheConfig, num_blocks: int):
        self.config = config
        self.cached = frozenset(cached_block_indices(config, num_blocks))
        self.segments = cache_segments(self.cached, num_blocks)
        self.reset()

    def start_run(self, ctx: StepContext) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all cached residuals (start of every sampling run)."""
        if not hasattr(self, "deltas"):  # slots 0 and 1 exist from the start and are cleared in place, so a
            self.deltas: dict[int, list[torch.Tensor] | None] = {0: None, 1: None}  # compiled forward's guards hold
            self.shapes: dict[int, tuple[int, ...] | None] = {0: None, 1: None}  # token shape per slot
        for slot in self.deltas:
            self.deltas[slot] = self.shapes[slot] = None
        self.calls = 0  # step counter for calls outside a scheduler-driven run

    def has_state(self) -> bool:
        """Whether any residual is stored."""
        return any(d is not None for d in self.deltas.values())

    def plan(self, ctx: StepContext | None, reference: torch.Tensor | None = None) -> CachePlan:
        """Host side: (recompute on this call by the schedule?, state slot = the call's index within its step)."""
        if ctx is None:
            step, slot = self.calls, 0
            self.calls += 1
        else:
            step, slot = ctx.step_index, ctx.call_index
            self.calls = step + 1
        return (step % self.config.interval == 0, slot)

    def __call__(self, adapter: Adapter, model: nn.Module, prep: Prepared, plan: CachePlan) -> Any:
        recompute, slot = plan
        blocks = adapter_blocks(adapter, model)
        cond = adapter.cond(model, prep, prep.timestep)
        h = prep.hidden
        shape = tuple(image_stream(h).shape)
        if recompute or self.shapes.get(slot) != shape:  # one check per call: nothing (fitting) stored
            self.shapes[slot] = shape
            deltas = []
            for cached, lo, hi in self.segments:
                start = h
                for i in range(lo, hi):
                    h = adapter.block(model, blocks[i], h, prep, cond)
                if cached:
                    deltas.append(detach_state(sub_states(h, start)))
            self.deltas[slot] = deltas
        else:
            deltas, j = self.deltas[slot], 0
            for cached, lo, hi in self.segments:
                if cached:
                    h = add_states(h, deltas[j])  # cached: no block forward
                    j += 1
                else:
                    for i in range(lo, hi):
                        h = adapter.block(model, blocks[i], h, prep, cond)
        return adapter.head(model, h, prep, cond)


def apply_cache(target: Any, config: CacheConfig | dict[str, Any] | None = None, scheduler: Any = None) -> nn.Module:
    """Attach the caching baseline (paper Sec. 2.2, Fig. 6; METHOD.md "The caching baseline").

    The blocks of the cached set C (`cached_block_indices`) run on steps `s % interval == 0` and are replaced
    by `input + cached residual` on the others, so a run of S steps costs N*S - c*(S - ceil(S/k)) block
    forwards. Residuals are reset at step 0 of every run of the pipeline's (or the given) scheduler; without
    a scheduler (a bare transformer), every call counts as the next step since attaching or `ilf.reset`.
    Nothing trains and the backbone's `requires_grad` flags are left as they are.

    Args:
        target: a supported transformer (PixArt, DiT, FLUX.1, SD3, Qwen-Image, Sana, Wan:
            `ilf.adapters.supported()`) or a stock pipeline holding it (acts on `.transformer`, follows
            `.scheduler`); a `torch.compile` wrapper is looked through.
        config: the settings (`CacheConfig`, a dict of its fields, or None for Table 1's: the inner 18 blocks,
            every 3rd step).
        scheduler: the scheduler a bare transformer's calls follow; a pipeline's own is used otherwise.

    Returns:
        The transformer, with the cache attached.

    Raises:
        ILFConfigError: a config field is outside what is allowed for this backbone (e.g. more cached blocks
            than it has).
        UnsupportedModelError: the target is not a supported transformer or pipeline.
        AlreadyAttachedError: a method or peer is attached, or a stateful diffusers hook sits inside the blocks.

    Example:
        ```py
        import ilf

        ilf.apply_cache(pipe, ilf.CacheConfig(location="inner", interval=3))
        image = pipe("a red fox in the snow", num_inference_steps=20).images[0]
        ilf.remove(pipe)
        ```
    """
    config = as_config(config, CacheConfig)
    model, pipeline = resolve_target(target)
    check_free(model)
    num_blocks = len(model_blocks(model))
    config.validate(num_blocks)
    install(model, pipeline, CacheMethod(config, num_blocks), scheduler)
    return model
