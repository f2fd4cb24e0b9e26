"""Where in a sampling run a transformer call happens, read from the pipeline's scheduler.

Feedback-aware scheduling (paper Sec. 3.3) needs the step index and the next timestep at every
step. A stock pipeline calls `scheduler.set_timesteps` once per call (which resets the scheduler's
`step_index` to None) and `scheduler.step` once per step, after the transformer call. So at a
transformer call the current step is `scheduler.step_index` (None -> the first step), and a call
is *outside* a sampling run when no run is in progress (timesteps never set, or all steps done).
Schedulers without `step_index` are located by matching the timestep against `scheduler.timesteps`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepContext:
    """One denoising step of a sampling run."""

    step_index: int  # 0-based index of this step in the run
    num_steps: int  # S, the run's number of inference steps
    t: float  # this step's timestep
    t_next: float  # the next step's timestep (0 after the last step)
    num_train_timesteps: int = 1000  # T, for clamping t_post to [0, T-1]


def step_context(scheduler: Any, timestep: torch.Tensor, cache: dict) -> StepContext | None:
    """The current step of `scheduler`'s run, or None when the call is outside a sampling run.

    `cache` keeps a CPU copy of the run's timesteps so that no device sync happens per step.
    """
    if scheduler is None or getattr(scheduler, "num_inference_steps", None) is None:
        return None
    ts = getattr(scheduler, "timesteps", None)
    if ts is None or len(ts) == 0:
        return None
    key = (id(ts), len(ts))
    if cache.get("key") != key:
        cache["key"], cache["list"] = key, [float(x) for x in torch.as_tensor(ts).flatten().tolist()]
    times: list[float] = cache["list"]
    num_steps = len(times)
    if hasattr(scheduler, "step_index"):
        idx = scheduler.step_index
        if idx is None:
            idx = getattr(scheduler, "begin_index", None) or 0
    else:  # stateless schedulers (e.g. DDIM): locate the step by its timestep
        t_val = float(timestep.flatten()[0])
        matches = [i for i, t in enumerate(times) if abs(t - t_val) < 1e-4]
        if not matches:
            return None
        idx = matches[0]
    if idx >= num_steps:
        return None
    if timestep.device.type == "cpu" and abs(float(timestep.flatten()[0]) - times[idx]) > 1e-3:
        return None  # a direct call with some other timestep while a run is pending
    t_next = times[idx + 1] if idx + 1 < num_steps else 0.0
    num_train = int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000) or 1000)
    return StepContext(idx, num_steps, times[idx], t_next, num_train)
