"""cache-dit's DBCache (static step mask or dynamic residual threshold) and its TaylorSeer calibrator, as one peer.

DBCache (cache-dit, vipshop): every step computes the first `Fn_compute_blocks` and last `Bn_compute_blocks`
blocks; the middle blocks run only on "compute" steps and are replaced by their cached residual otherwise.
Which steps compute is either a fixed mask (`policy: static`, cache-dit's `steps_computation_mask`) or decided
at run time from the first blocks' residual change (`policy: dynamic`, `residual_diff_threshold`, after
`max_warmup_steps` full steps). The TaylorSeer calibrator (`taylorseer: true`) extrapolates the cached
residual instead of reusing it; it changes the images, not the count.

Block forwards per image (N blocks, S steps, K compute steps of the mask):
    static   S * (Fn + Bn) + K * (N - Fn - Bn)
    dynamic  counted at run time

cache_dit is imported only when a row uses it (`import ilf` stays light).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..attach import resolve_target
from ..errors import ILFConfigError
from .base import PEER_ATTR, PeerConfig, PeerState, check_free, check_number

POLICIES = ("static", "dynamic")


@dataclass
class DBCacheConfig(PeerConfig):
    """cache-dit DBCache. Static: give `compute_steps` (K, spread evenly, first and last included) or `mask`."""

    name: ClassVar[str] = "dbcache"
    source: ClassVar[str] = "cache_dit.enable_cache(DBCacheConfig)"
    policy: str = "static"
    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    compute_steps: int | None = None  # static: K steps that compute the middle blocks
    mask: list[int] | None = None  # static: explicit 0/1 per step (instead of compute_steps)
    residual_diff_threshold: float = 0.08  # dynamic
    max_warmup_steps: int = 8  # dynamic: steps that always run in full
    max_cached_steps: int = -1  # dynamic: at most this many cached steps (-1: no limit)
    max_continuous_cached_steps: int = -1  # dynamic: at most this many cached steps in a row (-1: no limit)
    taylorseer: bool = False  # cache-dit's TaylorSeer calibrator on the cached residual
    taylorseer_order: int = 1

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> "DBCacheConfig":
        if self.policy not in POLICIES:
            raise ILFConfigError("dbcache.policy", self.policy, POLICIES)
        check_number("dbcache.Fn_compute_blocks", self.Fn_compute_blocks, 1 if self.Bn_compute_blocks == 0 else 0, integer=True)
        check_number("dbcache.Bn_compute_blocks", self.Bn_compute_blocks, 0, integer=True)
        if num_blocks is not None and self.Fn_compute_blocks + self.Bn_compute_blocks >= num_blocks:
            raise ILFConfigError("dbcache.Fn_compute_blocks", self.Fn_compute_blocks,
                                 f"Fn + Bn < {num_blocks} (the backbone's blocks), so some blocks can be cached")
        check_number("dbcache.residual_diff_threshold", self.residual_diff_threshold, 0)
        for f in ("max_warmup_steps", "taylorseer_order"):
            check_number(f"dbcache.{f}", getattr(self, f), 0 if f == "max_warmup_steps" else 1, integer=True)
        for f in ("max_cached_steps", "max_continuous_cached_steps"):
            check_number(f"dbcache.{f}", getattr(self, f), -1, integer=True)
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
        return self

    def steps_mask(self, num_steps: int) -> list[int]:
        """The static mask (1 = compute the middle blocks): `mask`, or K evenly spread steps incl. first and last."""
        self.validate(num_steps=num_steps)
        if self.mask is not None:
            return [int(x) for x in self.mask]
        k, s = self.compute_steps, num_steps
        on = {0} if k == 1 else {round(i * (s - 1) / (k - 1)) for i in range(k)}
        return [1 if j in on else 0 for j in range(s)]

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
        if self.policy == "static":
            if num_steps is None and self.mask is None:
                raise ILFConfigError("num_steps", None, "the pipeline's steps (needed to spread compute_steps)")
            kw.update(steps_computation_mask=self.steps_mask(num_steps or len(self.mask)),
                      steps_computation_policy="static")
        else:
            kw.update(residual_diff_threshold=float(self.residual_diff_threshold), max_warmup_steps=self.max_warmup_steps,
                      max_cached_steps=self.max_cached_steps, max_continuous_cached_steps=self.max_continuous_cached_steps)
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=self.taylorseer_order) if self.taylorseer else None
        return cache_dit.DBCacheConfig(**kw), calibrator


_REGISTRIES = ("_modules", "_parameters", "_buffers")


def _dict_keys(obj: Any) -> dict[str, Any]:
    """A shallow snapshot of `obj.__dict__` and, for a module, of its registries (cache-dit adds e.g. DiT's
    `_norm1_emb` submodule in place, which a snapshot of `__dict__` alone would not undo)."""
    snap = dict(obj.__dict__)
    for reg in _REGISTRIES:
        if isinstance(snap.get(reg), dict):
            snap[reg] = (snap[reg], dict(snap[reg]))
    return snap


def apply_dbcache(target: Any, config: DBCacheConfig, num_steps: int | None = None, scheduler: Any = None) -> PeerState:
    """`cache_dit.enable_cache` on a stock pipeline or a transformer.

    cache-dit refreshes its state at every pipeline call; on a bare transformer driven by `scheduler`, a forward
    pre-hook refreshes it at step 0 of each of the scheduler's runs.
    """
    import cache_dit

    from .diffusers_hooks import scheduler_getter
    from .run_boundary import starts_run

    model, pipeline = resolve_target(target)
    check_free(model)
    config.validate(len(model.transformer_blocks), num_steps)
    cache_cfg, calibrator = config.cache_dit_configs(num_steps)
    owner = pipeline if pipeline is not None else model
    before = {id(o): (o, _dict_keys(o)) for o in {id(model): model, id(owner): owner}.values()}
    with _quiet():
        cache_dit.enable_cache(owner, cache_config=cache_cfg, calibrator_config=calibrator)
    handle = None
    if pipeline is None:
        get_scheduler, ctx_cache = scheduler_getter(None, scheduler), {}

        def refresh(module: nn.Module, args: Any, kwargs: dict) -> None:
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            if starts_run(get_scheduler(), t, ctx_cache):
                import copy

                kw = {"cache_config": copy.deepcopy(cache_cfg)}
                if calibrator is not None:
                    kw["calibrator_config"] = copy.deepcopy(calibrator)
                cache_dit.refresh_context(model, **kw)

        handle = model.register_forward_pre_hook(refresh, with_kwargs=True)

    def undo() -> None:
        if handle is not None:
            handle.remove()
        with _quiet():
            cache_dit.disable_cache(owner)
        for obj, d in before.values():  # cache-dit leaves e.g. DiT's patched forward and its own flags behind
            for k in set(obj.__dict__) - set(d):
                if k != PEER_ATTR:
                    del obj.__dict__[k]
            for k, v in d.items():
                if k in _REGISTRIES and isinstance(v, tuple):  # the same dict object, its entries as before
                    registry, entries = v
                    registry.clear()
                    registry.update(entries)
                    v = registry
                obj.__dict__[k] = v

    state = PeerState(config.name, config, undo, {"owner": owner})
    model.__dict__[PEER_ATTR] = state
    return state


def reset_dbcache(model: nn.Module) -> None:
    """cache-dit refreshes its context at every pipeline call; a bare transformer is refreshed here."""
    import cache_dit

    cache_dit.refresh_context(model)


def _quiet():
    """cache-dit logs every attach at INFO; keep the harness's logs readable."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def ctx():
        log = logging.getLogger("cache_dit")
        level = log.level
        log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            log.setLevel(level)
    return ctx()


CONFIGS: dict[str, type[PeerConfig]] = {DBCacheConfig.name: DBCacheConfig}
