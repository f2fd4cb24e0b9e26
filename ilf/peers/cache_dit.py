"""cache-dit's DBCache (static step mask or dynamic residual threshold) and its TaylorSeer calibrator, as one peer.

DBCache (cache-dit, vipshop): every step computes the first `Fn_compute_blocks` and last `Bn_compute_blocks`
blocks; the middle blocks run only on "compute" steps and are replaced by their cached residual otherwise.
Which steps compute is either a fixed mask (`policy: static`, cache-dit's `steps_computation_mask`, set at each
run's first call: `compute_steps` spread over the run's steps, or an explicit `mask` for one step count) or decided
at run time from the first blocks' residual change (`policy: dynamic`, `residual_diff_threshold`, after
`max_warmup_steps` full steps). The TaylorSeer calibrator (`taylorseer: true`) extrapolates the cached
residual instead of reusing it; it changes the images, not the count.

Block forwards per image (N blocks, S steps, K compute steps of the mask):
    static   S * (Fn + Bn) + K * (N - Fn - Bn)
    dynamic  counted at run time

cache_dit is imported only when a row uses it (`import ilf` stays light).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..adapters import adapter_for, model_blocks
from ..attach import check_free, resolve_target, set_record
from ..errors import ILFConfigError
from .base import PeerConfig, PeerState, get_peer
from .configs import DBCacheConfig  # noqa: F401  (re-exported)

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
    pre-hook refreshes it at step 0 of each of the scheduler's runs. A static mask is made for each run from the
    run's own step count (`compute_steps` re-spread; a `mask` of another length refused before any block runs).
    Without a pipeline or scheduler the run's steps are unknown: the mask is made for `num_steps`, and a call past
    its last step is refused.
    """
    import copy

    import cache_dit

    from .diffusers_hooks import scheduler_getter
    from .run_boundary import run_start, run_steps

    model, pipeline = resolve_target(target)
    check_free(model)
    config.validate(len(model_blocks(model)), num_steps)
    static = config.policy == "static"
    if static and config.mask is None and num_steps is None and pipeline is None and scheduler is None:
        raise ILFConfigError("num_steps", None, "the steps of each run (a transformer without a pipeline or "
                             "scheduler cannot tell them, and compute_steps is spread over them)")
    cache_cfg, calibrator = config.cache_dit_configs(num_steps)
    owner = pipeline if pipeline is not None else model
    before = {id(o): (o, _dict_keys(o)) for o in {id(model): model, id(owner): owner}.values()}
    with _quiet():
        cache_dit.enable_cache(owner, cache_config=cache_cfg, calibrator_config=calibrator)
    get_scheduler, runs, ours = scheduler_getter(pipeline, scheduler), {"calls": 0}, {}

    def run_config(steps: int) -> Any:
        cfg = copy.deepcopy(cache_cfg)
        if static:
            cfg.steps_computation_mask = config.run_mask(steps, num_steps)
        return cfg

    def on_call(module: nn.Module, args: Any, kwargs: dict) -> None:
        t = adapter_for(module).timestep_of(args, kwargs)  # the scheduler's units (FLUX passes t / 1000)
        run = run_start(get_scheduler(), t, runs)
        if pipeline is not None:  # cache-dit made fresh contexts at the pipeline call: give them this run's mask
            fresh = [c for c in _contexts(model) if c.cache_config is not ours.get(c.name)]
            if static and fresh:
                if run is None:
                    raise ILFConfigError("dbcache.policy", "static", "'dynamic' here: the pipeline's scheduler does "
                                         "not tell this run's steps, which a static mask is made for")
                cfg = run_config(run_steps(run))
                for c in fresh:
                    c.cache_config = ours[c.name] = cfg
        elif run is not None:
            kw = {"cache_config": run_config(run_steps(run))}
            if calibrator is not None:
                kw["calibrator_config"] = copy.deepcopy(calibrator)
            cache_dit.refresh_context(model, **kw)
        elif static and get_scheduler() is None:  # no run detection: refuse a call past the mask's last step
            runs["calls"] += 1
            mask = cache_cfg.steps_computation_mask
            if runs["calls"] > len(mask):
                field, value = ("dbcache.mask", config.mask) if config.mask is not None else ("num_steps", num_steps)
                raise ILFConfigError(field, value, f"the run's steps: call {runs['calls']} since the last reset_peer "
                                     f"is past the {len(mask)} steps the mask was made for (pass scheduler= to "
                                     "apply_peer to follow each run's steps)")

    handle = model.register_forward_pre_hook(on_call, with_kwargs=True)

    def undo() -> None:
        handle.remove()
        with _quiet():
            cache_dit.disable_cache(owner)
        for obj, d in before.values():  # cache-dit leaves e.g. DiT's patched forward and its own flags behind
            for k in set(obj.__dict__) - set(d):  # (`ilf.remove` took the record off before)
                del obj.__dict__[k]
            for k, v in d.items():
                if k in _REGISTRIES and isinstance(v, tuple):  # the same dict object, its entries as before
                    registry, entries = v
                    registry.clear()
                    registry.update(entries)
                    v = registry
                obj.__dict__[k] = v

    state = PeerState(config.name, config, undo, {"owner": owner, "runs": runs})
    set_record(model, state)
    return state


def _contexts(model: nn.Module) -> list[Any]:
    """cache-dit's current cache contexts of `model` (one per block list)."""
    manager = model.__dict__.get("_context_manager")
    names = model.__dict__.get("_context_names") or []
    return [manager.get_context(n) for n in names] if manager is not None else []


def reset_dbcache(model: nn.Module) -> None:
    """cache-dit refreshes its context at every pipeline call; a bare transformer is refreshed here."""
    import cache_dit

    state = get_peer(model)
    if state is not None:
        state.info["runs"]["calls"] = 0
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
