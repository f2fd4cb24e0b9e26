"""The peer methods' config dataclasses, without torch, diffusers or cache-dit (the workflow reads them).

One dataclass per peer (`ilf.peers.PEERS`): fields with the library's defaults and their ranges (`number`,
`timestep_range`; `PeerConfig.validate(num_blocks, num_steps)` checks them and the peer's `extra_checks`, raising
`ILFConfigError` naming the field), `expected_block_forwards` (an int for a static budget,
"dynamic" when only counting at run time can tell), and the translation into the library's own config
(`cache_dit_configs`, `hook_config`), which imports that library when called. The attaching code is in
`cache_dit.py` (DBCache) and `diffusers_hooks.py` (the rest).
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ILFConfigError
from .base import PeerConfig, check_number, number, timestep_range


# ----------------------------------------------------------------------------------------- cache-dit
POLICIES = ("static", "dynamic")


@dataclass
class DBCacheConfig(PeerConfig):
    """cache-dit DBCache. Static: give `compute_steps` (K, spread evenly over each run's steps, first and last
    included) or `mask` (one 0/1 per step: runs of another step count are refused)."""

    name: ClassVar[str] = "dbcache"
    source: ClassVar[str] = "cache_dit.enable_cache(DBCacheConfig)"
    policy: str = "static"
    Fn_compute_blocks: int = 1  # >= 1 when Bn_compute_blocks is 0 (checked in extra_checks)
    Bn_compute_blocks: int = number(0, 0, integer=True)
    compute_steps: int | None = None  # static: K steps that compute the middle blocks
    mask: list[int] | None = None  # static: explicit 0/1 per step (instead of compute_steps)
    residual_diff_threshold: float = number(0.08, 0)  # dynamic
    max_warmup_steps: int = number(8, 0, integer=True)  # dynamic: steps that always run in full
    max_cached_steps: int = number(-1, -1, integer=True)  # dynamic: at most this many cached steps (-1: no limit)
    # dynamic: at most this many cached steps in a row (-1: no limit)
    max_continuous_cached_steps: int = number(-1, -1, integer=True)
    taylorseer: bool = False  # cache-dit's TaylorSeer calibrator on the cached residual
    taylorseer_order: int = number(1, 1, integer=True)
    # guidance as two transformer calls per step (FLUX's true CFG, Qwen-Image, Wan): true = the cond and uncond calls
    # keep their own cache and share the step (cache-dit's `enable_separate_cfg`); null = cache-dit's default for
    # the pipeline class (FluxPipeline: false, i.e. each call counted as a step)
    separate_cfg: bool | None = None

    def extra_checks(self, num_blocks: int | None, num_steps: int | None) -> None:
        if self.policy not in POLICIES:
            raise ILFConfigError("dbcache.policy", self.policy, POLICIES)
        if self.separate_cfg is not None and not isinstance(self.separate_cfg, bool):
            raise ILFConfigError("dbcache.separate_cfg", self.separate_cfg, "true, false or null")
        check_number("dbcache.Fn_compute_blocks", self.Fn_compute_blocks, 1 if self.Bn_compute_blocks == 0 else 0, integer=True)
        if num_blocks is not None and self.Fn_compute_blocks + self.Bn_compute_blocks >= num_blocks:
            raise ILFConfigError("dbcache.Fn_compute_blocks", self.Fn_compute_blocks,
                                 f"Fn + Bn < {num_blocks} (the backbone's blocks), so some blocks can be cached")
        if not isinstance(self.taylorseer, bool):
            raise ILFConfigError("dbcache.taylorseer", self.taylorseer, "true or false")
        if self.policy == "static":
            if (self.compute_steps is None) == (self.mask is None):
                raise ILFConfigError("dbcache.compute_steps", self.compute_steps,
                                     "exactly one of compute_steps (an integer) or mask (0/1 per step) for policy: static")
            if self.mask is not None:
                m = self.mask
                if not isinstance(m, (list, tuple)) or not m or any(x not in (0, 1) or isinstance(x, bool) for x in m):
                    raise ILFConfigError("dbcache.mask", m, "a non-empty list of 0/1, one per step")
                if num_steps is not None and len(m) != num_steps:
                    raise ILFConfigError("dbcache.mask", m, f"{num_steps} entries (one per step)")
            else:
                check_number("dbcache.compute_steps", self.compute_steps, 1, integer=True, high=num_steps)
        elif self.compute_steps is not None or self.mask is not None:
            raise ILFConfigError("dbcache.compute_steps", self.compute_steps or self.mask, "null for policy: dynamic")

    def steps_mask(self, num_steps: int) -> list[int]:
        """The static mask (1 = compute the middle blocks): `mask`, or K evenly spread steps incl. first and last."""
        self.validate(num_steps=num_steps)
        if self.mask is not None:
            return [int(x) for x in self.mask]
        k, s = self.compute_steps, num_steps
        on = {0} if k == 1 else {round(i * (s - 1) / (k - 1)) for i in range(k)}
        return [1 if j in on else 0 for j in range(s)]

    def run_mask(self, run_steps: int, attached_steps: int | None = None) -> list[int]:
        """The static mask of one run of `run_steps` steps: `compute_steps` re-spread over the run, or `mask`.

        Args:
            run_steps: the steps the run executes.
            attached_steps: the `num_steps` the peer was attached with (named in the error), if any.

        Returns:
            One 0/1 per step of the run (1 = compute the middle blocks).

        Raises:
            ILFConfigError: `mask` has another length (it is made for one step count), or `compute_steps` exceeds
                the run's steps.
        """
        was = f"; attached with num_steps={attached_steps}" if attached_steps is not None else ""
        if self.mask is not None and len(self.mask) != run_steps:
            raise ILFConfigError("dbcache.mask", self.mask, f"{run_steps} entries, one per step: this run has "
                                 f"{run_steps} steps, the mask {len(self.mask)}{was} (a mask is made for one step "
                                 "count; compute_steps is spread over each run's steps)")
        if self.compute_steps is not None and self.compute_steps > run_steps:
            raise ILFConfigError("dbcache.compute_steps", self.compute_steps,
                                 f"at most the run's steps: this run has {run_steps}{was}")
        return self.steps_mask(run_steps)

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int | str:
        self.validate(num_blocks, num_steps)
        if self.policy == "dynamic":
            return "dynamic"
        edge = self.Fn_compute_blocks + self.Bn_compute_blocks
        return num_steps * edge + sum(self.steps_mask(num_steps)) * (num_blocks - edge)

    def cache_dit_configs(self, num_steps: int | None) -> tuple[Any, Any]:
        """(cache_dit.DBCacheConfig, calibrator config or None)."""
        import cache_dit

        kw: dict[str, Any] = dict(Fn_compute_blocks=self.Fn_compute_blocks, Bn_compute_blocks=self.Bn_compute_blocks)
        if self.separate_cfg is not None:
            kw["enable_separate_cfg"] = self.separate_cfg
        if self.policy == "static":  # without num_steps: all K compute until a run sets its own mask
            steps = num_steps or (len(self.mask) if self.mask is not None else self.compute_steps)
            kw.update(steps_computation_mask=self.steps_mask(steps), steps_computation_policy="static")
        else:
            kw.update(residual_diff_threshold=float(self.residual_diff_threshold), max_warmup_steps=self.max_warmup_steps,
                      max_cached_steps=self.max_cached_steps, max_continuous_cached_steps=self.max_continuous_cached_steps)
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=self.taylorseer_order) if self.taylorseer else None
        return cache_dit.DBCacheConfig(**kw), calibrator


# ------------------------------------------------------------------------------------ diffusers hooks
@dataclass
class FirstBlockCacheConfig(PeerConfig):
    """diffusers `FirstBlockCache` (ParaAttention's FBCache): reuse blocks 1..N-1 while block 0's residual is stable."""

    name: ClassVar[str] = "fbcache"
    source: ClassVar[str] = "diffusers.hooks.apply_first_block_cache"
    threshold: float = number(0.05, 0)  # relative L1 change of block 0's residual below which the rest is reused

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> str:
        self.validate(num_blocks, num_steps)
        return "dynamic"

    def hook_config(self, runtime: Any) -> Any:  # runtime: diffusers_hooks._Runtime
        from diffusers.hooks import FirstBlockCacheConfig as Cfg

        return Cfg(threshold=float(self.threshold))


@dataclass
class MagCacheConfig(PeerConfig):
    """diffusers `MagCache`: skip all blocks while the accumulated magnitude-ratio error stays below `threshold`.

    Its ratios are measured per step at one step count (`num_inference_steps`): a run of another step count is
    refused at its first call, and ratios of another length when the config is checked (diffusers would
    interpolate them).
    """

    name: ClassVar[str] = "magcache"
    source: ClassVar[str] = "diffusers.hooks.apply_mag_cache"
    threshold: float = number(0.06, 0)
    max_skip_steps: int = number(3, 0, integer=True)
    retention_ratio: float = number(0.2, 0, high=1)  # the first round(ratio * S) steps always run in full
    # must equal the pipeline's steps (None: the row's steps)
    num_inference_steps: int | None = number(None, 1, integer=True, none_ok=True)
    mag_ratios: list[float] | None = None  # from `calibrate_magcache` (None: the harness calibrates once)

    def extra_checks(self, num_blocks: int | None, num_steps: int | None) -> None:
        if num_steps is not None and self.num_inference_steps not in (None, num_steps):
            raise ILFConfigError("magcache.num_inference_steps", self.num_inference_steps,
                                 f"the pipeline's num_inference_steps ({num_steps}): MagCache counts steps itself")
        r = self.mag_ratios
        if r is not None and (not isinstance(r, (list, tuple)) or not r or
                              not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)):
            raise ILFConfigError("magcache.mag_ratios", r, "null or a non-empty list of numbers (from calibrate_magcache)")
        steps = self.num_inference_steps if self.num_inference_steps is not None else num_steps
        if r is not None and steps is not None and len(r) != steps:  # one ratio per step, measured at that count
            raise ILFConfigError("magcache.mag_ratios", f"{len(r)} ratios", f"{steps}, one per step (ratios calibrated "
                                 f"for {len(r)} steps; calibrate_magcache with {steps} steps)")

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> str:
        self.validate(num_blocks, num_steps)
        return "dynamic"

    def hook_config(self, runtime: Any) -> Any:  # runtime: diffusers_hooks._Runtime
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
    (default) = every block of the model's block sequence (`transformer_blocks.<i>`; FLUX's
    `single_transformer_blocks.<i>` too), or a list of regexes (`re.fullmatch` on module names).
    """

    name: ClassVar[str] = "taylorseer"
    source: ClassVar[str] = "diffusers.hooks.apply_taylorseer_cache"
    cache_interval: int = number(2, 1, integer=True)
    disable_cache_before_step: int = number(3, 0, integer=True)
    disable_cache_after_step: int | None = number(None, 0, integer=True, none_ok=True)
    max_order: int = number(1, 0, integer=True)
    modules: Any = "blocks"

    def extra_checks(self, num_blocks: int | None, num_steps: int | None) -> None:
        m = self.modules
        if m != "blocks" and not (isinstance(m, (list, tuple)) and m and all(isinstance(x, str) for x in m)):
            raise ILFConfigError("taylorseer.modules", m, '"blocks" or a non-empty list of module-name regexes')

    def patterns(self, block_lists: tuple[str, ...] = ("transformer_blocks",)) -> list[str]:
        """The module-name regexes: with "blocks", one per block list of the model (`Adapter.block_lists`)."""
        if self.modules != "blocks":
            return list(self.modules)
        return [re.escape(name) + r"\.\d+" for name in block_lists]

    def compute_steps(self, num_steps: int) -> list[int]:
        """Steps on which the modules run (diffusers' rule): warm-up, every `cache_interval`-th after it, cool-down."""
        b, k, a = self.disable_cache_before_step, self.cache_interval, self.disable_cache_after_step
        return [j for j in range(num_steps) if j < b or (j - b - 1) % k == 0 or (a is not None and j >= a)]

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int:
        self.validate(num_blocks, num_steps)
        if self.modules != "blocks":
            return num_blocks * num_steps  # sub-block modules: every block still runs
        return num_blocks * len(self.compute_steps(num_steps))

    def hook_config(self, runtime: Any) -> Any:  # runtime: diffusers_hooks._Runtime
        import torch
        from diffusers.hooks import TaylorSeerCacheConfig as Cfg

        return Cfg(cache_interval=self.cache_interval, disable_cache_before_step=self.disable_cache_before_step,
                   disable_cache_after_step=self.disable_cache_after_step, max_order=self.max_order,
                   taylor_factors_dtype=torch.float32, cache_identifiers=self.patterns(runtime.block_lists))


@dataclass
class PyramidAttentionBroadcastConfig(PeerConfig):
    """diffusers `PyramidAttentionBroadcast`: reuse self-/cross-attention outputs every few steps in a timestep range."""

    name: ClassVar[str] = "pab"
    source: ClassVar[str] = "diffusers.hooks.apply_pyramid_attention_broadcast"
    # self-attention recomputed every k-th call in the range
    spatial_skip_range: int | None = number(2, 1, integer=True, none_ok=True)
    cross_skip_range: int | None = number(None, 1, integer=True, none_ok=True)  # cross-attention (PixArt only)
    timestep_skip_range: tuple = timestep_range((100, 800))  # timesteps (exclusive) where attention may be reused

    def extra_checks(self, num_blocks: int | None, num_steps: int | None) -> None:
        if self.spatial_skip_range is None and self.cross_skip_range is None:
            raise ILFConfigError("pab.spatial_skip_range", None, "an integer >= 1 (or set cross_skip_range)")

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int:
        self.validate(num_blocks, num_steps)
        return num_blocks * num_steps  # attention is skipped inside blocks; every block runs

    def hook_config(self, runtime: Any) -> Any:  # runtime: diffusers_hooks._Runtime
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
    A run without guidance (`guidance_scale <= 1`: no unconditional half) is refused at its first call.
    """

    name: ClassVar[str] = "fastercache"
    source: ClassVar[str] = "diffusers.hooks.apply_faster_cache"
    needs_guidance: ClassVar[bool] = True
    spatial_skip_range: int = number(2, 1, integer=True)
    spatial_timestep_skip_range: tuple = timestep_range((-1, 681))
    unconditional_batch_skip_range: int = number(5, 1, integer=True)
    unconditional_batch_timestep_skip_range: tuple = timestep_range((-1, 641))
    # weight of the attention-output difference FasterCache extrapolates with
    attention_weight: float = number(0.5, 0)

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int:
        self.validate(num_blocks, num_steps)
        return num_blocks * num_steps  # savings are inside blocks (attention, half the batch)

    def hook_config(self, runtime: Any) -> Any:  # runtime: diffusers_hooks._Runtime
        from diffusers.hooks import FasterCacheConfig as Cfg

        w = float(self.attention_weight)
        return Cfg(spatial_attention_block_skip_range=self.spatial_skip_range,
                   spatial_attention_timestep_skip_range=tuple(self.spatial_timestep_skip_range),
                   unconditional_batch_skip_range=self.unconditional_batch_skip_range,
                   unconditional_batch_timestep_skip_range=tuple(self.unconditional_batch_timestep_skip_range),
                   attention_weight_callback=lambda _m: w, current_timestep_callback=runtime.current_timestep,
                   tensor_format="BCHW")
