"""Where in a sampling run a transformer call happens, read from the pipeline's scheduler (host side).

Feedback-aware scheduling (paper Sec. 3.3) needs the step index and the next timestep at every step,
and every method with per-run state (the cache, first-block caches) must forget it when a new run
starts. A stock pipeline calls `scheduler.set_timesteps` once per call, which builds a new
`timesteps` tensor and resets `step_index` to None, optionally `set_begin_index(k)` (img2img /
`strength`: the run starts at step k and never sees step 0), and `scheduler.step` once per step,
after the transformer call(s). So:

- a new run starts at the first transformer call after the scheduler's `timesteps` object changed,
  or after `step_index` went back to None (`RunTracker`);
- the current step is `scheduler.step_index` (None -> `begin_index`, else 0); schedulers without
  `step_index` are located by matching the timestep against `scheduler.timesteps`;
- a second call at the same step (guidance as two calls: cond, then uncond) gets `call_index` 1.

All of this runs on the host, outside any compiled region (`on_run_start`, `ilf.attach`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class StepContext:
    """One transformer call inside a sampling run."""

    step_index: int  # 0-based index of this step in the run
    num_steps: int  # S, the run's number of inference steps
    t: float  # this step's timestep
    t_next: float  # the next step's timestep (0 after the last step)
    num_train_timesteps: int = 1000  # T, for clamping t_post to [0, T-1]
    call_index: int = 0  # 0 for the first call at this step, 1 for the second (split guidance), ...
    new_run: bool = False  # True on the first call of a sampling run


def as_scheduler_ref(scheduler: Any) -> Callable[[], Any] | None:
    """A zero-argument callable returning the scheduler: None, a scheduler, a pipeline (follows `.scheduler`), or a callable."""
    if scheduler is None:
        return None
    if hasattr(scheduler, "set_timesteps"):
        return lambda: scheduler
    if hasattr(scheduler, "scheduler"):
        ref = weakref.ref(scheduler)  # a pipeline: follow `pipe.scheduler`, even if the user swaps it later
        return lambda: getattr(ref(), "scheduler", None)
    if callable(scheduler):
        return scheduler
    raise TypeError(f"scheduler={type(scheduler).__name__}: expected a scheduler, a pipeline, a callable or None")


def _weak(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class RunTracker:
    """Tells, per transformer call, which step of which sampling run it belongs to (host-side, no device sync on CUDA).

        tracker = RunTracker(pipe)           # or a scheduler, or a () -> scheduler callable, or None
        ctx = tracker(timestep)              # StepContext, or None outside a sampling run
        if ctx is not None and ctx.new_run:  # first call of a run: reset per-run state
            ...

    A run is identified by the scheduler object and its `timesteps` tensor object (held weakly), and
    restarts whenever `step_index` returns to None after having advanced. A run that starts part-way
    (`set_begin_index`) is a new run like any other. `reset()` forgets the current run.
    """

    def __init__(self, scheduler: Any = None):
        self.scheduler_ref = as_scheduler_ref(scheduler)
        self.reset()

    def reset(self) -> None:
        """Forget the current run: the next call inside a run starts a new one."""
        self._run_key: tuple | None = None  # (scheduler weakref, timesteps weakref)
        self._times: list[float] = []
        self._last_index: int | None = None  # scheduler.step_index at the previous call (None = before the first step)
        self._last_step = -1
        self._calls_at_step = 0

    def _same_run(self, scheduler: Any, ts: Any) -> bool:
        key = self._run_key
        return key is not None and key[0]() is scheduler and key[1]() is ts

    def __call__(self, timestep: Any) -> StepContext | None:
        scheduler = self.scheduler_ref() if self.scheduler_ref is not None else None
        if scheduler is None or getattr(scheduler, "num_inference_steps", None) is None:
            return None
        ts = getattr(scheduler, "timesteps", None)
        if ts is None or len(ts) == 0:
            return None
        has_index = hasattr(scheduler, "step_index")
        raw_index = scheduler.step_index if has_index else None
        new_run = not self._same_run(scheduler, ts)
        if not new_run and has_index and raw_index is None and self._last_index is not None:
            new_run = True  # step_index went back to None: the scheduler's run restarted
        if new_run:
            times = [float(x) for x in torch.as_tensor(ts).flatten().tolist()]
        else:
            times = self._times
        num_steps = len(times)
        if has_index:
            idx = raw_index if raw_index is not None else (getattr(scheduler, "begin_index", None) or 0)
        else:  # stateless schedulers (e.g. DDIM): locate the step by its timestep
            if timestep is None:
                return None
            t_val = _first_value(timestep)
            matches = [i for i, t in enumerate(times) if abs(t - t_val) < 1e-4]
            if not matches:
                return None
            idx = matches[0]
            if not new_run and idx < self._last_step:
                new_run = True
        if idx >= num_steps:
            return None
        if timestep is not None and _is_host(timestep) and abs(_first_value(timestep) - times[idx]) > _match_tol(
                timestep, times[idx]):
            return None  # a direct call with some other timestep while a run is pending
        if new_run:
            self._run_key = (_weak(scheduler), _weak(ts))
            self._times = times
            self._last_step, self._calls_at_step = -1, 0
        self._last_index = raw_index
        if idx == self._last_step:
            self._calls_at_step += 1
        else:
            self._last_step, self._calls_at_step = idx, 0
        t_next = times[idx + 1] if idx + 1 < num_steps else 0.0
        num_train = int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000) or 1000)
        return StepContext(idx, num_steps, times[idx], t_next, num_train, self._calls_at_step, new_run)


def _match_tol(timestep: Any, t: float) -> float:
    """How far a call's timestep may be from the step's timestep `t` and still be that step's call.

    1e-3, or, for a floating-point tensor, 4 ulps of its dtype at |t|: a pipeline may round the scheduler's
    timestep to the latents' dtype and the model's units (FLUX: `t.to(bfloat16) / 1000`, times 1000 again in
    `timestep_of`: three roundings of at most eps/2 each).
    """
    if torch.is_tensor(timestep) and timestep.is_floating_point():
        return max(1e-3, 4 * torch.finfo(timestep.dtype).eps * max(abs(t), 1.0))
    return 1e-3


def _is_host(timestep: Any) -> bool:
    return not torch.is_tensor(timestep) or timestep.device.type == "cpu"


def _first_value(timestep: Any) -> float:
    return float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)


def step_context(scheduler: Any, timestep: torch.Tensor, tracker: RunTracker | None = None) -> StepContext | None:
    """The current step of `scheduler`'s run (a one-off `RunTracker` unless one is given), or None outside a run."""
    tracker = tracker if tracker is not None else RunTracker(scheduler)
    return tracker(timestep)


def on_run_start(model: nn.Module, scheduler: Any, callback: Callable[[StepContext], None],
                 timestep_of: Callable[[tuple, dict], Any] | None = None) -> RemovableHandle:
    """Call `callback(ctx)` on the host at the first transformer call of every sampling run; returns the hook handle.

    For methods whose per-run state lives elsewhere (e.g. diffusers' cache hooks: pass
    `lambda ctx: registry.reset_stateful_hooks()`). `scheduler` is a scheduler, a pipeline or a callable
    as for `RunTracker`. The check runs in a forward pre-hook that `torch.compile` leaves out of the graph;
    `timestep_of(args, kwargs)` finds the call's timestep (default: the `timestep` keyword or argument).
    """
    tracker = RunTracker(scheduler)
    find = timestep_of or _timestep_argument

    @torch.compiler.disable
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ctx = tracker(find(args, kwargs))
        if ctx is not None and ctx.new_run:
            callback(ctx)

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    handle.tracker = tracker  # type: ignore[attr-defined]  # exposed for `reset`
    return handle


def _timestep_argument(args: tuple, kwargs: dict) -> Any:
    if "timestep" in kwargs:
        return kwargs["timestep"]
    for a in args[1:]:
        if torch.is_tensor(a) and a.ndim <= 1:
            return a
    return None
