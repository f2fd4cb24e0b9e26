"""The time condition of the blocks after F during training (`train_t_post`, beyond the paper).

METHOD.md trains with t_post = t (`train_t_post: t`, the default): outside a sampling run the feedback
forward conditions every block at the sample's own t. `train_t_post: inference` conditions the re-run loop,
the blocks after it and the head at the t_post that inference uses for the run's configured t_post strategy
(`feedback.t_post`, `feedback.ratio`) and step count (`train_t_post_steps`), so the feedback is trained in
the regime it is sampled in.

A training t in 0..T-1 is rarely an inference timestep: it takes the spacing i and step index of the
nearest timestep of the inference schedule (DPM-Solver++ with `train_t_post_steps` steps), then
`ilf.schedule.post_feedback_timestep(config, N, t, t - i, step_index)`; on the inference grid this is
exactly what sampling uses. The mapping is a (T,) table built once per run.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapters import Prepared
from ..attach import get_attachment
from ..config import FeedbackConfig
from ..context import StepContext
from ..errors import ILFConfigError
from ..feedback import FeedbackMethod
from ..registry import dpm_solver_pp
from ..schedule import post_feedback_timestep

from .config import TRAIN_T_POST


def inference_timesteps(scheduler_config: dict[str, Any], num_steps: int) -> list[float]:
    """The DPM-Solver++ timesteps of a `num_steps`-step sampling run (the paper's sampler, METHOD.md)."""
    sched = dpm_solver_pp(dict(scheduler_config))
    sched.set_timesteps(num_steps)
    return [float(t) for t in sched.timesteps]


def inference_t_post_table(config: FeedbackConfig, num_blocks: int, timesteps: list[float],
                           num_train_timesteps: int = 1000) -> torch.Tensor:
    """(T,) float32: t_post for every training timestep t = 0..T-1 under `config`'s strategy and ratio, with
    the spacing and step index of the nearest inference timestep in `timesteps` (descending, as a scheduler
    gives them; the last step's next timestep is 0, as at inference)."""
    if not timesteps:
        raise ValueError("timesteps is empty: expected the inference schedule's timesteps")
    nxt = list(timesteps[1:]) + [0.0]
    table = torch.empty(num_train_timesteps, dtype=torch.float32)
    for t in range(num_train_timesteps):
        k = min(range(len(timesteps)), key=lambda j: (abs(timesteps[j] - t), j))
        spacing = timesteps[k] - nxt[k]
        table[t] = post_feedback_timestep(config, num_blocks, float(t), float(t) - spacing, k, num_train_timesteps)
    return table


class InferenceTPostFeedback(FeedbackMethod):
    """The feedback forward with t_post looked up per sample from a (T,) table on calls outside a sampling run
    (training); inside a sampling run it is the plain `FeedbackMethod`."""

    def __init__(self, config: FeedbackConfig, num_blocks: int, table: torch.Tensor,
                 feedback: nn.Module | None = None, scales: nn.Parameter | None = None):
        super().__init__(config, num_blocks, feedback, scales)
        self.table = table

    def plan(self, ctx: StepContext | None, reference: torch.Tensor) -> Any:
        """Inside a sampling run: the plain plan. Outside (training): feedback on, t_post from the table."""
        if ctx is not None:
            return super().plan(ctx, reference)
        return (True, _FROM_TABLE)

    def __call__(self, adapter: Any, model: nn.Module, prep: Prepared, plan: Any):
        if plan[1] is _FROM_TABLE:  # per sample: the (B,) t_post of each sample's own training timestep
            idx = prep.timestep.reshape(-1).round().long().clamp(0, len(self.table) - 1).cpu()
            t_post = self.table[idx].to(device=prep.timestep.device).reshape(prep.timestep.shape)
            plan = (True, t_post)
        return super().__call__(adapter, model, prep, plan)


_FROM_TABLE = object()  # plan marker: t_post is looked up per sample in `__call__`


def use_train_t_post(transformer: nn.Module, mode: str, num_steps: int | None, scheduler_config: dict[str, Any],
                     num_train_timesteps: int = 1000) -> torch.Tensor | None:
    """Make the attached ILF's training calls use `mode` ("t": nothing changes; "inference": the table above,
    for `num_steps` inference steps). Returns the table (None for "t"). Call after `apply_feedback`."""
    if mode not in TRAIN_T_POST:
        raise ILFConfigError("train_t_post", mode, TRAIN_T_POST)
    if mode == "t":
        return None
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ILFConfigError("train_t_post_steps", num_steps, "the inference step count (an integer >= 1)")
    state = get_attachment(transformer)
    if state is None or not isinstance(state.method, FeedbackMethod):
        raise ILFConfigError("transformer", type(transformer).__name__, "a model with ILF attached")
    table = inference_t_post_table(state.config, state.method.num_blocks,
                                   inference_timesteps(scheduler_config, num_steps), num_train_timesteps)
    old = state.method  # the method owns F and the scales (ilf.attach): the new one takes them over
    state.method = InferenceTPostFeedback(state.config, old.num_blocks, table, old.feedback, old.scales)
    return table
