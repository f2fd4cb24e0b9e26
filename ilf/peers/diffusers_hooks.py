"""diffusers' own cache hooks as peers: FirstBlockCache, PyramidAttentionBroadcast, MagCache, FasterCache, TaylorSeer.

Each is attached with diffusers' `apply_*` function (the library's code, not a copy) plus one outer hook of ours
on the transformer, `ilf_peer_run`, that (1) runs every call inside `CacheMixin.cache_context(transformer,
"cond")` (FirstBlockCache and MagCache need a cache context; PixArt and DiT are not `CacheMixin`s), (2) records
the call's timestep for the hooks that ask for one (PAB, FasterCache), and (3) resets every stateful hook at
step 0 of a sampling run, so two pipeline calls give identical images. `remove_peer` removes every hook and
restores each module's `__dict__` (the instance `forward` and `_diffusers_hook` the registry leaves behind).

Block-forward budgets (per image, N blocks, S steps):
    fbcache      dynamic (block 0 always; the rest when block 0's residual changed by >= threshold)
    magcache     dynamic (accumulated magnitude-ratio error; needs `mag_ratios` from `calibrate_magcache`)
    taylorseer   N * |compute steps| (whole blocks predicted by a Taylor series on the other steps)
    pab          N * S (skips attention *inside* blocks: no block is skipped)
    fastercache  N * S (skips attention and the unconditional half of the batch inside blocks; PixArt only)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..attach import resolve_target
from ..errors import ILFConfigError, UnsupportedModelError
from .base import PEER_ATTR, PeerConfig, PeerState, check_free, check_number
from .run_boundary import starts_run

RUN_HOOK = "ilf_peer_run"


# ------------------------------------------------------------------------------------------------ configs
@dataclass
class FirstBlockCacheConfig(PeerConfig):
    """diffusers `FirstBlockCache` (ParaAttention's FBCache): reuse blocks 1..N-1 while block 0's residual is stable."""

    name: ClassVar[str] = "fbcache"
    source: ClassVar[str] = "diffusers.hooks.apply_first_block_cache"
    threshold: float = 0.05  # relative L1 change of block 0's residual below which the rest is reused

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> "FirstBlockCacheConfig":
        check_number("fbcache.threshold", self.threshold, 0)
        return self

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> str:
        self.validate(num_blocks, num_steps)
        return "dynamic"

    def hook_config(self, runtime: "_Runtime") -> Any:
        from diffusers.hooks import FirstBlockCacheConfig as Cfg

        return Cfg(threshold=float(self.threshold))


@dataclass
class MagCacheConfig(PeerConfig):
    """diffusers `MagCache`: skip all blocks while the accumulated magnitude-ratio error stays below `threshold`."""

    name: ClassVar[str] = "magcache"
    source: ClassVar[str] = "diffusers.hooks.apply_mag_cache"
    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2  # the first round(ratio * S) steps always run in full
    num_inference_steps: int | None = None  # must equal the pipeline's steps (None: the row's steps)
    mag_ratios: list[float] | None = None  # from `calibrate_magcache` (None: the harness calibrates once)

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> "MagCacheConfig":
        check_number("magcache.threshold", self.threshold, 0)
        check_number("magcache.max_skip_steps", self.max_skip_steps, 0, integer=True)
        check_number("magcache.retention_ratio", self.retention_ratio, 0, high=1)
        check_number("magcache.num_inference_steps", self.num_inference_steps, 1, integer=True, none_ok=True)
        if num_steps is not None and self.num_inference_steps not in (None, num_steps):
            raise ILFConfigError("magcache.num_inference_steps", self.num_inference_steps,
                                 f"the pipeline's num_inference_steps ({num_steps}): MagCache counts steps itself")
        r = self.mag_ratios
        if r is not None and (not isinstance(r, (list, tuple)) or not r or
                              not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)):
            raise ILFConfigError("magcache.mag_ratios", r, "null or a non-empty list of numbers (from calibrate_magcache)")
        return self

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> str:
        self.validate(num_blocks, num_steps)
        return "dynamic"

    def hook_config(self, runtime: "_Runtime") -> Any:
        from diffusers.hooks import MagCacheConfig as Cfg

        steps = self.num_inference_steps
        if steps is None:
            raise ILFConfigError("magcache.num_inference_steps", None, "the pipeline's num_inference_steps")
        if self.mag_ratios is None:
            raise ILFConfigError("magcache.mag_ratios", None, "the model's ratios: run "
                                 "ilf.peers.calibrate_magcache(pipe, run, num_inference_steps) first")
        return Cfg(threshold=float(self.threshold), max_skip_steps=self.max_skip_steps,
                   retention_ratio=float(self.retention_ratio), num_inference_steps=steps,
                   mag_ratios=[float(x) for x in self.mag_ratios])


@dataclass
class TaylorSeerConfig(PeerConfig):
    """diffusers `TaylorSeer`: outputs of the named modules are predicted by a Taylor series between full steps.

    `modules` must name modules explicitly (diffusers' default patterns match nothing in PixArt/DiT): "blocks"
    (default) = every `transformer_blocks.<i>`, or a list of regexes (`re.fullmatch` on module names).
    """

    name: ClassVar[str] = "taylorseer"
    source: ClassVar[str] = "diffusers.hooks.apply_taylorseer_cache"
    cache_interval: int = 2
    disable_cache_before_step: int = 3
    disable_cache_after_step: int | None = None
    max_order: int = 1
    modules: Any = "blocks"

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> "TaylorSeerConfig":
        check_number("taylorseer.cache_interval", self.cache_interval, 1, integer=True)
        check_number("taylorseer.disable_cache_before_step", self.disable_cache_before_step, 0, integer=True)
        check_number("taylorseer.disable_cache_after_step", self.disable_cache_after_step, 0, integer=True, none_ok=True)
        check_number("taylorseer.max_order", self.max_order, 0, integer=True)
        m = self.modules
        if m != "blocks" and not (isinstance(m, (list, tuple)) and m and all(isinstance(x, str) for x in m)):
            raise ILFConfigError("taylorseer.modules", m, '"blocks" or a non-empty list of module-name regexes')
        return self

    def patterns(self) -> list[str]:
        return [r"transformer_blocks\.\d+"] if self.modules == "blocks" else list(self.modules)

    def compute_steps(self, num_steps: int) -> list[int]:
        """Steps on which the modules run (diffusers' rule): warm-up, every `cache_interval`-th after it, cool-down."""
        b, k, a = self.disable_cache_before_step, self.cache_interval, self.disable_cache_after_step
        return [j for j in range(num_steps) if j < b or (j - b - 1) % k == 0 or (a is not None and j >= a)]

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int:
        self.validate(num_blocks, num_steps)
        if self.modules != "blocks":
            return num_blocks * num_steps  # sub-block modules: every block still runs
        return num_blocks * len(self.compute_steps(num_steps))

    def hook_config(self, runtime: "_Runtime") -> Any:
        from diffusers.hooks import TaylorSeerCacheConfig as Cfg

        return Cfg(cache_interval=self.cache_interval, disable_cache_before_step=self.disable_cache_before_step,
                   disable_cache_after_step=self.disable_cache_after_step, max_order=self.max_order,
                   taylor_factors_dtype=torch.float32, cache_identifiers=self.patterns())


@dataclass
class PyramidAttentionBroadcastConfig(PeerConfig):
    """diffusers `PyramidAttentionBroadcast`: reuse self-/cross-attention outputs every few steps in a timestep range."""

    name: ClassVar[str] = "pab"
    source: ClassVar[str] = "diffusers.hooks.apply_pyramid_attention_broadcast"
    spatial_skip_range: int | None = 2  # self-attention recomputed every k-th call in the range
    cross_skip_range: int | None = None  # cross-attention (PixArt only)
    timestep_skip_range: tuple = (100, 800)  # timesteps (exclusive) where attention may be reused

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> "PyramidAttentionBroadcastConfig":
        check_number("pab.spatial_skip_range", self.spatial_skip_range, 1, integer=True, none_ok=True)
        check_number("pab.cross_skip_range", self.cross_skip_range, 1, integer=True, none_ok=True)
        if self.spatial_skip_range is None and self.cross_skip_range is None:
            raise ILFConfigError("pab.spatial_skip_range", None, "an integer >= 1 (or set cross_skip_range)")
        _check_range("pab.timestep_skip_range", self.timestep_skip_range)
        return self

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int:
        self.validate(num_blocks, num_steps)
        return num_blocks * num_steps  # attention is skipped inside blocks; every block runs

    def hook_config(self, runtime: "_Runtime") -> Any:
        from diffusers.hooks import PyramidAttentionBroadcastConfig as Cfg

        r = tuple(self.timestep_skip_range)
        return Cfg(spatial_attention_block_skip_range=self.spatial_skip_range,
                   cross_attention_block_skip_range=self.cross_skip_range, spatial_attention_timestep_skip_range=r,
                   cross_attention_timestep_skip_range=r, current_timestep_callback=runtime.current_timestep)


@dataclass
class FasterCacheConfig(PeerConfig):
    """diffusers `FasterCache` (PixArt only): reuse attention and the unconditional branch's output in timestep ranges.

    DiT is refused: its pipeline batches classifier-free guidance as [cond, uncond] and passes `class_labels`,
    while FasterCache's denoiser hook splits the batch as [uncond, cond] over hidden/encoder states only.
    """

    name: ClassVar[str] = "fastercache"
    source: ClassVar[str] = "diffusers.hooks.apply_faster_cache"
    spatial_skip_range: int = 2
    spatial_timestep_skip_range: tuple = (-1, 681)
    unconditional_batch_skip_range: int = 5
    unconditional_batch_timestep_skip_range: tuple = (-1, 641)
    attention_weight: float = 0.5  # weight of the attention-output difference FasterCache extrapolates with

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> "FasterCacheConfig":
        check_number("fastercache.spatial_skip_range", self.spatial_skip_range, 1, integer=True)
        check_number("fastercache.unconditional_batch_skip_range", self.unconditional_batch_skip_range, 1, integer=True)
        check_number("fastercache.attention_weight", self.attention_weight, 0)
        _check_range("fastercache.spatial_timestep_skip_range", self.spatial_timestep_skip_range)
        _check_range("fastercache.unconditional_batch_timestep_skip_range", self.unconditional_batch_timestep_skip_range)
        return self

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int:
        self.validate(num_blocks, num_steps)
        return num_blocks * num_steps  # savings are inside blocks (attention, half the batch)

    def hook_config(self, runtime: "_Runtime") -> Any:
        from diffusers.hooks import FasterCacheConfig as Cfg

        w = float(self.attention_weight)
        return Cfg(spatial_attention_block_skip_range=self.spatial_skip_range,
                   spatial_attention_timestep_skip_range=tuple(self.spatial_timestep_skip_range),
                   unconditional_batch_skip_range=self.unconditional_batch_skip_range,
                   unconditional_batch_timestep_skip_range=tuple(self.unconditional_batch_timestep_skip_range),
                   attention_weight_callback=lambda _m: w, current_timestep_callback=runtime.current_timestep,
                   tensor_format="BCHW")


def _check_range(name: str, r: Any) -> None:
    if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r) and r[0] < r[1]):
        raise ILFConfigError(name, r, "[low, high] timesteps with low < high")


# --------------------------------------------------------------------------------------------- attaching
_APPLY = {"fbcache": "apply_first_block_cache", "magcache": "apply_mag_cache", "taylorseer": "apply_taylorseer_cache",
          "pab": "apply_pyramid_attention_broadcast", "fastercache": "apply_faster_cache"}


class _Runtime:
    """Per-attachment state our outer hook keeps: the current timestep and the scheduler's run cache."""

    def __init__(self, scheduler_ref: Callable[[], Any]):
        self.scheduler_ref = scheduler_ref
        self.timestep: float = 1000.0
        self.ctx_cache: dict = {}
        self.runs = 0  # sampling runs started (each reset every stateful hook)
        self.expected_steps: int | None = None  # MagCache: the pipeline must run this many steps

    def current_timestep(self) -> float:
        return self.timestep


def _run_hook_class():
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.models.cache_utils import CacheMixin

    class PeerRunHook(ModelHook):
        """Outermost hook: cache context "cond", current timestep, reset of stateful hooks at each run start."""

        def __init__(self, runtime: _Runtime):
            super().__init__()
            self.runtime = runtime

        def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any):
            rt = self.runtime
            t = kwargs.get("timestep")
            if t is None and len(args) > 1 and torch.is_tensor(args[-1]):
                t = args[-1]
            if t is not None:
                rt.timestep = float(torch.as_tensor(t).flatten()[0])
            scheduler = rt.scheduler_ref()
            if starts_run(scheduler, t, rt.ctx_cache):
                n = len(scheduler.timesteps)
                if rt.expected_steps is not None and n != rt.expected_steps:
                    raise ILFConfigError("num_inference_steps", n, f"{rt.expected_steps}, the MagCache config's "
                                         "num_inference_steps (MagCache counts steps itself)")
                HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks(recurse=True)
                rt.runs += 1
            with CacheMixin.cache_context(module, "cond"):
                return self.fn_ref.original_forward(*args, **kwargs)

    return PeerRunHook


def scheduler_getter(pipeline: Any, scheduler: Any) -> Callable[[], Any]:
    """() -> the scheduler whose runs reset the peer: the given one, else the pipeline's (followed by weakref)."""
    from ..context import as_scheduler_ref

    return as_scheduler_ref(scheduler if scheduler is not None else pipeline) or (lambda: None)


def _snapshot(model: nn.Module) -> dict[int, tuple[nn.Module, dict[str, Any]]]:
    keys = ("forward", "_diffusers_hook")
    return {id(m): (m, {k: m.__dict__[k] for k in keys if k in m.__dict__}) for m in model.modules()}


def _restore(snapshot: dict[int, tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, before in snapshot.values():
        for k in ("forward", "_diffusers_hook"):
            if k in before:
                m.__dict__[k] = before[k]
            else:
                m.__dict__.pop(k, None)


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
    config.validate(len(model.transformer_blocks))
    runtime = _Runtime(scheduler_getter(pipeline, scheduler))
    snapshot = _snapshot(model)
    hook_cfg = config.hook_config(runtime)
    if config.name == "magcache":
        runtime.expected_steps = hook_cfg.num_inference_steps
    getattr(dh, _APPLY[config.name])(model, hook_cfg)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(_run_hook_class()(runtime), RUN_HOOK)
    registry.invalidate_child_registries_cache()

    def undo() -> None:
        _restore(snapshot)  # drops every hook registry and instance forward the hooks installed

    state = PeerState(config.name, config, undo, {"runtime": runtime, "hook_config": hook_cfg})
    model.__dict__[PEER_ATTR] = state
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
    tail = model.transformer_blocks[-1]
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
