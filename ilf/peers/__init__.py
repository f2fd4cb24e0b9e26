"""Peer methods beyond the paper, from maintained libraries, attached and counted like ILF.

One entry point for all of them: a config dataclass per method (`validate`, `to_dict`, `from_dict`,
`expected_block_forwards` -> int for a static budget or "dynamic"), `apply_peer(target, config)` and
`remove_peer(target)` (also reached through `ilf.remove`), which restores the baseline exactly.

    from ilf.peers import DBCacheConfig, apply_peer, remove_peer
    apply_peer(pipe, DBCacheConfig(compute_steps=11))     # cache-dit DBCache F1B0, 11 of each run's steps compute
    ...
    remove_peer(pipe)

| name        | method                               | library                                   | budget  |
|-------------|--------------------------------------|-------------------------------------------|---------|
| dbcache     | DBCache (static mask / dynamic), TaylorSeer calibrator | cache-dit (`ilf.peers.cache_dit`) | static or dynamic |
| fbcache     | FirstBlockCache                      | diffusers hooks (`ilf.peers.diffusers_hooks`) | dynamic |
| magcache    | MagCache (after `calibrate_magcache`)| diffusers hooks                           | dynamic |
| taylorseer  | TaylorSeer on whole blocks           | diffusers hooks                           | static  |
| pab         | Pyramid Attention Broadcast          | diffusers hooks                           | N*S (skips inside blocks) |
| fastercache | FasterCache (PixArt only)            | diffusers hooks                           | N*S (skips inside blocks) |

Modules load lazily: `import ilf.peers` imports neither cache_dit nor diffusers' hooks, and the config classes
(`ilf.peers.configs`) import neither torch nor those libraries.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import ILFConfigError
from .base import PeerConfig, PeerState, get_peer

# peer name -> (module, config class): the one list of peers (workflow schema, generate and bench read it)
# (the config classes live in `configs.py`, which imports neither torch nor the libraries: the workflow reads them)
PEERS: dict[str, tuple[str, str]] = {
    "dbcache": ("configs", "DBCacheConfig"),
    "fbcache": ("configs", "FirstBlockCacheConfig"),
    "magcache": ("configs", "MagCacheConfig"),
    "taylorseer": ("configs", "TaylorSeerConfig"),
    "pab": ("configs", "PyramidAttentionBroadcastConfig"),
    "fastercache": ("configs", "FasterCacheConfig"),
}
_EXPORTS = {cls: mod for mod, cls in PEERS.values()} | {"calibrate_magcache": "diffusers_hooks"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ilf.peers' has no attribute {name!r}")


def config_class(name: str) -> type[PeerConfig]:
    """The config dataclass of peer `name`."""
    if name not in PEERS:
        raise ILFConfigError("method", name, sorted(PEERS))
    mod, cls = PEERS[name]
    return getattr(importlib.import_module(f".{mod}", __name__), cls)


def peer_config(name: str, settings: dict[str, Any] | None = None) -> PeerConfig:
    """A validated config of peer `name` from a row's settings dict (`{threshold: 0.1}`)."""
    return config_class(name).from_dict(settings or {})


def apply_peer(target: Any, config: PeerConfig, num_steps: int | None = None, scheduler: Any = None) -> PeerState:
    """Attach a peer to a transformer or stock pipeline; returns its `PeerState`.

    Per-run state is reset at step 0 of every run of the pipeline's scheduler (or `scheduler`, for a bare
    transformer driven by one's own loop; with neither, call `reset_peer` between runs). Every run is checked at
    its first call, before any block runs, against its own step count: DBCache's `compute_steps` is re-spread over
    it, a DBCache `mask` or MagCache's ratios made for another step count are refused, and so is FasterCache on a
    batch without classifier-free guidance.

    Args:
        target: a stock pipeline or its transformer.
        config: the peer's config (`peer_config(name, settings)`).
        num_steps: the steps the runs are meant to have: checked against the config now; MagCache's
            `num_inference_steps` when unset; needed by DBCache `compute_steps` on a transformer with neither
            pipeline nor scheduler.
        scheduler: the scheduler whose runs a bare transformer follows.

    Returns:
        The attached peer's `PeerState`.

    Raises:
        ILFConfigError: the config does not fit the backbone or `num_steps`.
        AlreadyAttachedError: ILF, the cache or another peer is attached.
        UnsupportedModelError: the peer cannot run on the backbone (FasterCache on DiT).
    """
    if not isinstance(config, PeerConfig):
        raise ILFConfigError("config", type(config).__name__, f"a peer config ({', '.join(sorted(PEERS))})")
    if config.name == "dbcache":
        from .cache_dit import apply_dbcache

        return apply_dbcache(target, config, num_steps, scheduler)
    from .diffusers_hooks import apply_diffusers_hook

    if config.name == "magcache" and config.num_inference_steps is None and num_steps is not None:
        config.num_inference_steps = num_steps
    return apply_diffusers_hook(target, config, scheduler)


def _model(target: Any):
    from ..attach import resolve_target

    return resolve_target(target)[0]


def remove_peer(target: Any) -> Any:
    """Detach the attached peer; the transformer (and pipeline) are then exactly the original. No-op if none."""
    from ..attach import remove

    model = _model(target)
    if get_peer(model) is not None:
        remove(model)
    return model


def reset_peer(target: Any) -> None:
    """Forget the attached peer's per-run state (needed only between runs of a bare transformer)."""
    model = _model(target)
    state = get_peer(model)
    if state is None:
        return
    if state.name == "dbcache":
        from .cache_dit import reset_dbcache

        reset_dbcache(model)
    else:
        from .diffusers_hooks import reset_diffusers_hooks

        reset_diffusers_hooks(model)


__all__ = ["PEERS", "PeerConfig", "PeerState", "apply_peer", "remove_peer", "reset_peer", "get_peer", "peer_config",
           "config_class", *sorted(_EXPORTS)]
