"""Does this transformer call start a new sampling run, and how many steps does it run? On `ilf.context.RunTracker`.

The same detector ILF and the cache use (a run starts when the scheduler's run starts: `set_timesteps`,
`set_begin_index` / img2img runs that never see step 0, a swapped scheduler), kept in the peer's own state dict.
The peers' libraries count a run's steps themselves from its first call, so "the run's steps" is the number of
steps it executes: the scheduler's steps from the step it starts at.
"""
from __future__ import annotations

from typing import Any

from ..context import RunTracker, StepContext


def run_start(scheduler: Any, timestep: Any, cache: dict) -> StepContext | None:
    """The step context of the first transformer call of `scheduler`'s current run, else None.

    Args:
        scheduler: the scheduler driving the run (None: nothing is detected; call `ilf.peers.reset_peer`
            between runs of a bare transformer).
        timestep: the call's timestep.
        cache: the peer's per-attachment dict (holds the tracker).

    Returns:
        The call's `StepContext` when it starts a run, else None.
    """
    if scheduler is None or timestep is None:
        return None
    tracker = cache.get("run_tracker")
    if tracker is None or cache.get("run_scheduler") is not scheduler:
        tracker = cache["run_tracker"] = RunTracker(scheduler)
        cache["run_scheduler"] = scheduler
    ctx = tracker(timestep)
    return ctx if ctx is not None and ctx.new_run else None


def run_steps(ctx: StepContext) -> int:
    """The number of steps the run that `ctx` starts executes (from its first step to the schedule's end)."""
    return ctx.num_steps - ctx.step_index
