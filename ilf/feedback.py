"""The Inner Loop Feedback forward (paper Sec. 3.1, eqs. 2-3; METHOD.md "A step with feedback").

    h = patch_embed(x_t)
    for i in 0..e:     h_i = B_i(h_{i-1}, cond(t))            # first pass, stops at e
    f = F(h_e, cond(t))                                         # feedback block, time t
    g = h_{b-1}
    for i in b..e:     g = B_i(g + s_i * f, cond(t_post))      # inner loop re-run (eqs. 2-3)
    for i in e+1..N-1: g = B_i(g, cond(t_post))
    out = head(g, cond(t_post))

Cost N + m + 1 block forwards; a step without feedback is the plain backbone (N).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .backbones import Prepared, plain_forward
from .config import FeedbackConfig
from .context import StepContext
from .schedule import post_feedback_timestep, resolve_feedback_steps


def make_feedback_block(model: nn.Module, config: FeedbackConfig) -> nn.Module:
    """One extra block of the backbone's own class and config: a copy of B_e, or the class's fresh init."""
    block = copy.deepcopy(model.transformer_blocks[config.loop_end])
    if config.init == "fresh":
        for module in block.modules():
            if module is not block and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    for p in block.parameters():
        p.requires_grad_(True)
    return block


class FeedbackMethod:
    """Runs one transformer call with or without feedback, as the schedule says."""

    name = "feedback"

    def __init__(self, config: FeedbackConfig, num_blocks: int):
        self.config = config
        self.num_blocks = num_blocks
        self._steps: dict[int, frozenset[int]] = {}

    def feedback_steps(self, num_steps: int) -> frozenset[int]:
        if num_steps not in self._steps:
            self._steps[num_steps] = frozenset(resolve_feedback_steps(self.config.feedback_steps, num_steps))
        return self._steps[num_steps]

    def start_run(self, ctx: StepContext) -> None:
        """Called at step 0 of every sampling run: check the schedule fits the step count."""
        self.feedback_steps(ctx.num_steps)

    def t_post(self, prep: Prepared, ctx: StepContext | None) -> torch.Tensor:
        """The post-feedback time condition as a (B,) tensor; the caller's own tensor when t_post = t."""
        if ctx is None or self.config.t_post == "default":
            return prep.timestep  # training / direct calls: t_post = t (METHOD.md)
        value = post_feedback_timestep(self.config, self.num_blocks, ctx.t, ctx.t_next, ctx.step_index,
                                       ctx.num_train_timesteps)
        return torch.full(prep.timestep.shape, value, dtype=torch.float32, device=prep.timestep.device)

    def __call__(self, adapter: Any, model: nn.Module, prep: Prepared, ctx: StepContext | None):
        if ctx is not None and ctx.step_index not in self.feedback_steps(ctx.num_steps):
            return plain_forward(adapter, model, prep)
        b, e = self.config.loop_start, self.config.loop_end
        blocks = model.transformer_blocks
        cond_t = adapter.cond(model, prep, prep.timestep)
        h = prep.hidden
        for i in range(b):  # blocks before the loop: h_{b-1}
            h = adapter.block(model, blocks[i], h, prep, cond_t)
        g = h
        for i in range(b, e + 1):  # first pass through the loop, stops at e
            h = adapter.block(model, blocks[i], h, prep, cond_t)
        f = adapter.block(model, model.ilf_feedback, h, prep, cond_t)  # feedback block F at time t
        t_post = self.t_post(prep, ctx)
        cond_p = cond_t if t_post is prep.timestep else adapter.cond(model, prep, t_post)
        scales = model.ilf_scales
        for j, i in enumerate(range(b, e + 1)):  # eqs. 2-3: g = B_i(g + s_i * f)
            g = adapter.block(model, blocks[i], g + scales[j].to(f.dtype) * f, prep, cond_p)
        for i in range(e + 1, len(blocks)):
            g = adapter.block(model, blocks[i], g, prep, cond_p)
        return adapter.head(model, g, prep, cond_p)
