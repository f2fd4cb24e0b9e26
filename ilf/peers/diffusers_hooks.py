"""diffusers' own cache hooks as peers: FirstBlockCache, PyramidAttentionBroadcast, MagCache, FasterCache, TaylorSeer.

Each is attached with diffusers' `apply_*` function (the library's code, not a copy) plus one outer hook of ours
on the transformer, `ilf_peer_run`, that (1) runs every call inside the caller's cache context, else
`CacheMixin.cache_context(transformer, "cond")` (FirstBlockCache and MagCache need one; PixArt and DiT are not
`CacheMixin`s; FluxPipeline sets "cond" and, with `true_cfg_scale`, "uncond"), (2) records the call's timestep
(the scheduler's units, `Adapter.timestep_of`) for the hooks that ask for one (PAB, FasterCache), (3) resets every stateful hook at
step 0 of a sampling run, so two pipeline calls give identical images, and (4) refuses, before any block runs,
a MagCache run of another step count than its ratios' and a FasterCache call without a guidance batch.
`remove_peer` removes every hook and restores each module's `__dict__` (the instance `forward` and
`_diffusers_hook` the registry leaves behind) and the hooks of each registry that was there before (so the peer
can be attached again).

Block-forward budgets (per image, N blocks, S steps):
    fbcache      dynamic (block 0 always; the rest when block 0's residual changed by >= threshold)
    magcache     dynamic (accumulated magnitude-ratio error; needs `mag_ratios` from `calibrate_magcache`)
    taylorseer   N * |compute steps| (whole blocks predicted by a Taylor series on the other steps)
    pab          N * S (skips attention *inside* blocks: no block is skipped)
    fastercache  N * S (skips attention and the unconditional half of the batch inside blocks; PixArt only)
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from ..adapters import adapter_for, model_blocks
from ..attach import check_free, resolve_target, set_record
from ..errors import ILFConfigError, UnsupportedModelError
from .base import PeerConfig, PeerState
from .configs import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,  # noqa: F401  (re-exported)
                      PyramidAttentionBroadcastConfig, TaylorSeerConfig)
from .run_boundary import run_start, run_steps

RUN_HOOK = "ilf_peer_run"


# --------------------------------------------------------------------------------------------- attaching
_APPLY = {"fbcache": "apply_first_block_cache", "magcache": "apply_mag_cache", "taylorseer": "apply_taylorseer_cache",
          "pab": "apply_pyramid_attention_broadcast", "fastercache": "apply_faster_cache"}


class _Runtime:
    """Per-attachment state our outer hook keeps: the current timestep and the scheduler's run cache."""

    def __init__(self, scheduler_ref: Callable[[], Any], block_lists: tuple[str, ...] = ("transformer_blocks",)):
        self.scheduler_ref = scheduler_ref
        self.block_lists = block_lists  # the model's block lists (TaylorSeer's "blocks")
        self.timestep: float = 1000.0  # in the scheduler's units (`Adapter.timestep_of`)
        self.ctx_cache: dict = {}
        self.runs = 0  # sampling runs started (each reset every stateful hook)
        self.expected_steps: int | None = None  # MagCache: each run must execute this many steps
        self.needs_guidance = False  # FasterCache: every call must carry a guidance batch [uncond, cond]

    def current_timestep(self) -> float:
        return self.timestep


def _run_hook_class():
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.models.cache_utils import CacheMixin

    class PeerRunHook(ModelHook):
        """Outermost hook: the caller's cache context (else "cond"), current timestep, reset of stateful hooks at each
        run start."""

        def __init__(self, runtime: _Runtime):
            super().__init__()
            self.runtime = runtime

        def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any):
            rt = self.runtime
            t = adapter_for(module).timestep_of(args, kwargs)  # the scheduler's units (FLUX passes t / 1000)
            if t is not None:
                rt.timestep = float(torch.as_tensor(t).flatten()[0])
            run = run_start(rt.scheduler_ref(), t, rt.ctx_cache)
            if rt.needs_guidance:  # every call: nothing reaches FasterCache's batch split without an uncond half
                _check_guidance_batch(kwargs.get("hidden_states", args[0] if args else None))
            if run is not None:
                steps = run_steps(run)
                if rt.expected_steps is not None and steps != rt.expected_steps:
                    raise ILFConfigError("magcache.num_inference_steps", rt.expected_steps,
                                         f"this run's step count: it has {steps} steps (MagCache's ratios are one per "
                                         f"step, measured at {rt.expected_steps}; calibrate_magcache with {steps})")
            context = _caller_context(module)  # read before a reset clears it
            if run is not None:
                HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks(recurse=True)
                rt.runs += 1
            with CacheMixin.cache_context(module, context):
                return self.fn_ref.original_forward(*args, **kwargs)

    return PeerRunHook


def _caller_context(module: nn.Module) -> str:
    """The cache context the caller set (`FluxPipeline` calls in `cache_context("cond")` / `("uncond")`: each keeps
    its own hook state), else "cond" (PixArt and DiT are not `CacheMixin`s: their pipelines set none)."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import StateManager

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for child in (registry, *registry._get_child_registries()):
        for hook in child.hooks.values():
            for attr in vars(hook).values() if hook._is_stateful else ():
                if isinstance(attr, StateManager) and attr._context is not None:
                    return attr._context.name
    return "cond"


def _check_guidance_batch(hidden: Any) -> None:
    """Refuse a call whose batch is not a classifier-free-guidance batch [uncond, cond] of one latent batch.

    The stock pipelines build it as `cat([latents] * 2)`, so its halves are equal; a run at `guidance_scale <= 1`
    sends the latents alone (its halves, if any, are different images).
    """
    if not torch.is_tensor(hidden):
        return
    b = hidden.shape[0]
    if b % 2 == 0 and torch.equal(hidden[: b // 2], hidden[b // 2:]):
        return
    raise ILFConfigError("guidance_scale", "<= 1", f"> 1 for FasterCache: it splits every batch as [uncond, cond] "
                         f"and approximates the unconditional half, but this call's batch of {b} has none (a run "
                         "without classifier-free guidance); use another peer there")


def _check_stream_end(model: nn.Module, config: PeerConfig) -> None:
    """Refuse FirstBlockCache, and TaylorSeer on the last block, where the last block ends a stream (SD3's
    `context_pre_only` block returns None for the text): both hooks take every block output to be a tensor."""
    from ..adapters import named_blocks

    name, last = named_blocks(model)[-1]
    if not getattr(last, "context_pre_only", False):
        return
    if config.name == "fbcache" or (config.name == "taylorseer"
                                    and any(re.fullmatch(p, name) for p in config.patterns())):
        raise UnsupportedModelError(
            f"{config.name} is not supported on {type(model).__name__}: its last block ({name}) is context_pre_only "
            "and returns no text stream (None), which diffusers' hook does arithmetic on"
            + (" (TaylorSeer: list `modules` that leave that block out)" if config.name == "taylorseer" else "")
            + "; use dbcache, magcache or pab there")


def scheduler_getter(pipeline: Any, scheduler: Any) -> Callable[[], Any]:
    """() -> the scheduler whose runs reset the peer: the given one, else the pipeline's (followed by weakref)."""
    from ..context import as_scheduler_ref

    return as_scheduler_ref(scheduler if scheduler is not None else pipeline) or (lambda: None)


_Snapshot = dict[int, tuple[nn.Module, dict[str, Any], tuple | None]]


def _snapshot(model: nn.Module) -> _Snapshot:
    """Each module's instance `forward` and `_diffusers_hook`, and the hooks of a registry already there (a pipeline's
    `cache_context` gives the transformer one: the peer's hooks are registered into that same object)."""
    keys = ("forward", "_diffusers_hook")
    snap: _Snapshot = {}
    for m in model.modules():
        registry = m.__dict__.get("_diffusers_hook")
        chain = None if registry is None else (dict(registry.hooks), list(registry._hook_order),
                                               list(registry._fn_refs))
        snap[id(m)] = (m, {k: m.__dict__[k] for k in keys if k in m.__dict__}, chain)
    return snap


def _restore(snapshot: _Snapshot) -> None:
    for m, before, chain in snapshot.values():
        for k in ("forward", "_diffusers_hook"):
            if k in before:
                m.__dict__[k] = before[k]
            else:
                m.__dict__.pop(k, None)
        if chain is not None:  # the registry that was there: its hooks as before, its child list rebuilt on use
            registry = before["_diffusers_hook"]
            registry.hooks, registry._hook_order, registry._fn_refs = dict(chain[0]), list(chain[1]), list(chain[2])
            registry._child_registries_cache = None


def apply_diffusers_hook(target: Any, config: PeerConfig, scheduler: Any = None) -> PeerState:
    """Attach one of diffusers' cache hooks (`config` is one of this module's configs) to a transformer or pipeline."""
    from diffusers import hooks as dh
    from diffusers.hooks import HookRegistry

    model, pipeline = resolve_target(target)
    check_free(model)
    if config.name == "fastercache" and not hasattr(model, "caption_projection"):
        raise UnsupportedModelError(
            f"FasterCache is not supported on {type(model).__name__}: DiT's pipeline batches guidance as [cond, uncond] "
            "and conditions on `class_labels`, but FasterCache's denoiser hook splits the batch as [uncond, cond] over "
            "hidden/encoder states only, so it would mix the two branches. Use it on PixArt.")
    config.validate(len(model_blocks(model)))
    _check_stream_end(model, config)
    runtime = _Runtime(scheduler_getter(pipeline, scheduler), adapter_for(model).block_lists)
    snapshot = _snapshot(model)
    hook_cfg = config.hook_config(runtime)
    if config.name == "magcache":
        runtime.expected_steps = hook_cfg.num_inference_steps
    runtime.needs_guidance = config.needs_guidance
    getattr(dh, _APPLY[config.name])(model, hook_cfg)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(_run_hook_class()(runtime), RUN_HOOK)
    registry.invalidate_child_registries_cache()

    def undo() -> None:
        _restore(snapshot)  # drops every hook registry and instance forward the hooks installed

    state = PeerState(config.name, config, undo, {"runtime": runtime, "hook_config": hook_cfg})
    set_record(model, state)
    return state


def reset_diffusers_hooks(model: nn.Module) -> None:
    """Forget every stateful hook's per-run state (a bare transformer has no scheduler to detect runs)."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks(recurse=True)


def calibrate_magcache(target: Any, run: Callable[[], Any], num_inference_steps: int) -> list[float]:
    """MagCache's magnitude ratios for this model and scheduler: one calibration run of `run()` (no block skipped).

    `run` performs one pipeline call with `num_inference_steps` steps. Returns S floats (diffusers computes them as
    mean_token(|r_t| / |r_{t-1}|) of the blocks' residual r; the first is 1.0). Leaves the model as it was.
    """
    from diffusers.hooks import MagCacheConfig as Cfg, apply_mag_cache

    model, _ = resolve_target(target)
    check_free(model)
    snapshot = _snapshot(model)
    apply_mag_cache(model, Cfg(num_inference_steps=num_inference_steps, calibrate=True))
    tail = model_blocks(model)[-1]
    hook = tail._diffusers_hook.get_hook("mag_cache_block_hook")
    got: dict[str, list[float]] = {}

    def grab(module: nn.Module, args: Any) -> None:  # the state's list object (diffusers rebinds it at the end)
        got.setdefault("ratios", hook.state_manager.get_state().calibration_ratios)

    from diffusers.models.cache_utils import CacheMixin

    handle = tail.register_forward_pre_hook(grab)
    try:
        with CacheMixin.cache_context(model, "cond"), torch.inference_mode():
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # diffusers prints the ratios
                run()
    finally:
        handle.remove()
        _restore(snapshot)
    ratios = [float(x) for x in got.get("ratios", [])]
    if len(ratios) != num_inference_steps:
        raise RuntimeError(f"MagCache calibration recorded {len(ratios)} ratios for {num_inference_steps} steps: "
                           "did `run` call the pipeline once with that many steps?")
    return ratios


CONFIGS: dict[str, type[PeerConfig]] = {c.name: c for c in (FirstBlockCacheConfig, MagCacheConfig, TaylorSeerConfig,
                                                            PyramidAttentionBroadcastConfig, FasterCacheConfig)}
