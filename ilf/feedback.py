"""The Inner Loop Feedback forward (paper Sec. 3.1, eqs. 2-3; METHOD.md "A step with feedback").

    h = patch_embed(x_t)
    for i in 0..e:     h_i = B_i(h_{i-1}, cond(t))            # first pass, stops at e
    f = F(h_e, cond(t))                                         # feedback block, time t
    g = h_{b-1}
    for i in b..e:     g = B_i(g + s_i * f, cond(t_post))      # inner loop re-run (eqs. 2-3)
    for i in e+1..N-1: g = B_i(g, cond(t_post))
    out = head(g, cond(t_post))

Cost N + m + 1 block forwards; a step without feedback is the plain backbone (N).

F's parameters are trainable, so they are kept in the dtype block e computes in: under diffusers' layerwise
casting (`enable_layerwise_casting`, e.g. float8 storage) that is the hooks' compute dtype, never the storage
dtype (an optimizer step on float8 weights would round away; autograd makes no float8 gradients). A copy of
a float8-stored block e is its exact upcast, so F computes as block e does.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from diffusers.hooks.layerwise_casting import LayerwiseCastingHook
from diffusers.utils.torch_utils import unwrap_module
from torch import nn

from .backbones import Prepared, plain_forward
from .config import FeedbackConfig
from .context import StepContext
from .schedule import post_feedback_timestep, resolve_feedback_steps


def _casting_hook(module: nn.Module) -> LayerwiseCastingHook | None:
    registry = module.__dict__.get("_diffusers_hook")
    hooks = registry.hooks.values() if registry is not None else ()
    return next((h for h in hooks if isinstance(h, LayerwiseCastingHook)), None)


def compute_dtype(block: nn.Module) -> torch.dtype:
    """The dtype `block` computes in: its layerwise-casting hooks' compute dtype, else its first parameter's dtype.

    Args:
        block: a transformer block (a `torch.compile` wrapper is looked through).

    Returns:
        The compute dtype (not the storage dtype of diffusers' `enable_layerwise_casting`).
    """
    block = unwrap_module(block)
    for module in block.modules():
        hook = _casting_hook(module)
        if hook is not None:
            return hook.compute_dtype
    return next(block.parameters()).dtype


_INSTANCE_HOOKS = ("_diffusers_hook", "forward", "_hf_hook", "_old_forward")  # diffusers' and accelerate's


def _plain_copy(block: nn.Module) -> nn.Module:
    """A deep copy of `block` without the hooks on its modules (diffusers' registries, e.g. layerwise casting or
    group offloading, accelerate's, instance `forward`s, forward (pre-)hooks), whose state is not copied;
    layers that diffusers' layerwise casting stores in a low-precision dtype are upcast to their compute dtype."""
    memo: dict[int, Any] = {}
    for module in block.modules():
        memo.update({id(module.__dict__[a]): None for a in _INSTANCE_HOOKS if a in module.__dict__})
        memo[id(module._forward_hooks)], memo[id(module._forward_pre_hooks)] = OrderedDict(), OrderedDict()
    plain = copy.deepcopy(block, memo)
    for module, original in zip(plain.modules(), block.modules()):
        for attr in _INSTANCE_HOOKS:
            module.__dict__.pop(attr, None)
        hook = _casting_hook(original)
        if hook is not None:
            module.to(dtype=hook.compute_dtype)
    return plain


def make_feedback_block(model: nn.Module, config: FeedbackConfig) -> nn.Module:
    """One extra block of the backbone's own class and config: a copy of B_e, or the class's fresh init.

    F is a plain, eager block: hooks on B_e are not copied (`_plain_copy`), and a `torch.compile` wrapper is
    looked through. Its weights are trainable, in the dtype B_e computes in (see the module doc).
    """
    with torch.inference_mode(False):  # F's parameters are never inference tensors, whatever the caller's mode
        block = _plain_copy(unwrap_module(model.transformer_blocks[config.loop_end]))
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

    def follow(self, device: torch.device, dtype: torch.dtype) -> None:
        """Host side: move F to `device` and `dtype` and the scales to `device` (they stay float32).

        The same `Parameter` objects are kept (an optimizer holds them) and stay normal tensors even when the call
        runs under `torch.inference_mode()` (a preview before training).
        """
        if self.feedback is None:
            return
        p = next(self.feedback.parameters(), None)
        moved = p is not None and (p.device != device or p.dtype != dtype)
        scales = self.scales is not None and self.scales.device != device
        if moved or scales:
            with torch.inference_mode(False), torch.no_grad():
                if moved:
                    self.feedback.to(device=device, dtype=dtype)
                if scales:
                    self.scales.data = self.scales.data.to(device)

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
