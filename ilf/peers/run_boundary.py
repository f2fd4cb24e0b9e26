"""Does this transformer call start a new sampling run? The peers' per-run reset, on `ilf.context.RunTracker`.

The same detector ILF and the cache use (a run starts when the scheduler's run starts: `set_timesteps`,
`set_begin_index` / img2img runs that never see step 0, a swapped scheduler), kept in the peer's own state dict.
"""
from __future__ import annotations

from typing import Any

from ..context import RunTracker


def starts_run(scheduler: Any, timestep: Any, cache: dict) -> bool:
    """True for the first transformer call of `scheduler`'s current run (`cache`: the peer's per-attachment dict).

    With no scheduler (a bare transformer) nothing is detected: call `ilf.peers.reset_peer` between runs.
    """
    if scheduler is None or timestep is None:
        return False
    tracker = cache.get("run_tracker")
    if tracker is None or cache.get("run_scheduler") is not scheduler:
        tracker = cache["run_tracker"] = RunTracker(scheduler)
        cache["run_scheduler"] = scheduler
    ctx = tracker(timestep)
    return ctx is not None and ctx.new_run
