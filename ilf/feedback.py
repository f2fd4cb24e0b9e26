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
    """One extra block of the backbone's own class and config: a copy of B_e, or the class's fresh init.

    Hooks on B_e (diffusers' `_diffusers_hook` registries, instance `forward`s) are not copied: F is a plain block.
    """
    block = copy.deepcopy(model.transformer_blocks[config.loop_end])
    for module in block.modules():
        module.__dict__.pop("_diffusers_hook", None)
        module.__dict__.pop("forward", None)
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    if config.init == "fresh":
        for module in block.modules():
            if module is not block and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    for p in block.parameters():
        p.requires_grad_(True)
    return block


FeedbackPlan = tuple  # (run feedback: bool, t_post: 0-d tensor on the backbone's device, or None for t_post = t)


class FeedbackMethod:
    """Runs one transformer call with or without feedback, as the schedule says.

    Owns the feedback block F (`feedback`, the backbone's dtype) and the scales (`scales`, float32, (m,)):
    neither is registered on the transformer, so its `dtype`, `state_dict` and `save_pretrained` are unchanged.
    """

    name = "feedback"

    def __init__(self, config: FeedbackConfig, num_blocks: int, feedback: nn.Module | None = None,
                 scales: nn.Parameter | None = None):
        self.config = config
        self.num_blocks = num_blocks
        self.feedback = feedback
        self.scales = scales
        self._steps: dict[int, frozenset[int]] = {}

    def feedback_steps(self, num_steps: int) -> frozenset[int]:
        if num_steps not in self._steps:
            self._steps[num_steps] = frozenset(resolve_feedback_steps(self.config.feedback_steps, num_steps))
        return self._steps[num_steps]

    def start_run(self, ctx: StepContext) -> None:
        """Called at the first call of every sampling run: check the schedule fits the step count."""
        self.feedback_steps(ctx.num_steps)

    def follow(self, reference: torch.Tensor) -> None:
        """Host side: move F to `reference`'s device and dtype and the scales to its device (they stay float32)."""
        if self.feedback is None:
            return
        p = next(self.feedback.parameters(), None)
        if p is not None and (p.device != reference.device or p.dtype != reference.dtype):
            self.feedback.to(device=reference.device, dtype=reference.dtype)
        if self.scales is not None and self.scales.device != reference.device:
            self.scales.data = self.scales.data.to(reference.device)

    def plan(self, ctx: StepContext | None, reference: torch.Tensor) -> FeedbackPlan:
        """Host side: (feedback on this call?, t_post as a 0-d float32 tensor or None when t_post = t)."""
        if ctx is None or self.config.t_post == "default":
            return (ctx is None or ctx.step_index in self.feedback_steps(ctx.num_steps), None)  # t_post = t
        if ctx.step_index not in self.feedback_steps(ctx.num_steps):
            return (False, None)
        value = post_feedback_timestep(self.config, self.num_blocks, ctx.t, ctx.t_next, ctx.step_index,
                                       ctx.num_train_timesteps)
        return (True, torch.tensor(value, dtype=torch.float32).to(reference.device, non_blocking=True))

    def __call__(self, adapter: Any, model: nn.Module, prep: Prepared, plan: FeedbackPlan):
        run_feedback, t_post = plan
        if not run_feedback:
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
        f = adapter.block(model, self.feedback, h, prep, cond_t)  # feedback block F at time t
        if t_post is None:
            cond_p = cond_t
        else:
            cond_p = adapter.cond(model, prep, t_post.expand(prep.timestep.shape))
        scales = self.scales.to(f.dtype)
        for j, i in enumerate(range(b, e + 1)):  # eqs. 2-3: g = B_i(g + s_i * f)
            g = adapter.block(model, blocks[i], g + scales[j] * f, prep, cond_p)
        for i in range(e + 1, len(blocks)):
            g = adapter.block(model, blocks[i], g, prep, cond_p)
        return adapter.head(model, g, prep, cond_p)
