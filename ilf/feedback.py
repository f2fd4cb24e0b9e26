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
from diffusers.utils.torch_utils import unwrap_module
from torch import nn

from .adapters import (Adapter, Prepared, adapter_blocks, adapter_for, feed, image_stream, model_blocks,
                       plain_forward)
from .adapters._lora import merge_lora
from .attach import as_config, casting_hook, check_free, get_attachment, install, resolve_target
from .config import FeedbackConfig
from .context import StepContext
from .errors import ILFConfigError
from .schedule import post_feedback_timestep, resolve_feedback_steps

FEEDBACK_BLOCK = "ilf_feedback"  # read-only alias of the feedback block on an attached transformer
FEEDBACK_SCALES = "ilf_scales"  # read-only alias of the scales


_INSTANCE_HOOKS = ("_diffusers_hook", "forward", "_hf_hook", "_old_forward")  # diffusers' and accelerate's


def _plain_copy(block: nn.Module) -> nn.Module:
    """A deep copy of `block` without the hooks on its modules (diffusers' registries, e.g. layerwise casting or
    group offloading, accelerate's, instance `forward`s, forward (pre-)hooks), whose state is not copied;
    layers that diffusers' layerwise casting stores in a low-precision dtype are upcast to their compute dtype;
    peft LoRA layers are merged into their base layers as the original computes (`merge_lora`)."""
    memo: dict[int, Any] = {}
    for module in block.modules():
        memo.update({id(module.__dict__[a]): None for a in _INSTANCE_HOOKS if a in module.__dict__})
        memo[id(module._forward_hooks)], memo[id(module._forward_pre_hooks)] = OrderedDict(), OrderedDict()
    plain = copy.deepcopy(block, memo)
    for module, original in zip(plain.modules(), block.modules()):
        for attr in _INSTANCE_HOOKS:
            module.__dict__.pop(attr, None)
        hook = casting_hook(original)
        if hook is not None:
            module.to(dtype=hook.compute_dtype)
    return merge_lora(plain)


def make_feedback_block(model: nn.Module, config: FeedbackConfig) -> nn.Module:
    """One extra block of the backbone's own class and config: a copy of B_e, or the class's fresh init.

    F is a plain, eager block: hooks on B_e are not copied (`_plain_copy`), a `torch.compile` wrapper is
    looked through, and a LoRA on B_e is merged into F's base weights (F holds no LoRA layers; METHOD.md
    "LoRA"). Its weights are trainable, in the dtype B_e computes in (see the module doc).
    """
    with torch.inference_mode(False):  # F's parameters are never inference tensors, whatever the caller's mode
        block = _plain_copy(unwrap_module(model_blocks(model)[config.loop_end]))
        if config.init == "fresh":
            for module in block.modules():
                if module is not block and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    for p in block.parameters():
        p.requires_grad_(True)
    return block


def scale_shape(config: FeedbackConfig, adapter: Adapter) -> tuple[int, ...]:
    """The scales' shape: (m,) with one fed stream, (m, k) with k > 1 (one scale per loop block and stream)."""
    k = 1 if config.streams == "image" else len(adapter.streams)
    return (config.loop_size,) if k == 1 else (config.loop_size, k)


FeedbackPlan = tuple  # (run feedback: bool, t_post: 0-d tensor on the backbone's device, or None for t_post = t)


class FeedbackMethod:
    """Runs one transformer call with or without feedback, as the schedule says.

    Owns the feedback block F (`feedback`, the backbone's dtype) and the scales (`scales`, float32,
    `scale_shape`: (m,), or (m, k) on a multi-stream backbone feeding back k streams):
    neither is registered on the transformer, so its `dtype`, `state_dict` and `save_pretrained` are unchanged.
    """

    name = "feedback"
    label = "ILF (ilf.apply_feedback)"

    def __init__(self, config: FeedbackConfig, num_blocks: int, feedback: nn.Module | None = None,
                 scales: nn.Parameter | None = None):
        self.config = config
        self.num_blocks = num_blocks
        self.feedback = feedback
        self.scales = scales
        self._steps: dict[int, frozenset[int]] = {}

    @property
    def reference_block(self) -> int:
        """F follows block e's device and compute dtype."""
        return self.config.loop_end

    def aliases(self) -> dict[str, Any]:
        """`model.ilf_feedback` and `model.ilf_scales` while attached (plain attributes, not registered)."""
        return {FEEDBACK_BLOCK: self.feedback, FEEDBACK_SCALES: self.scales}

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

    def __call__(self, adapter: Adapter, model: nn.Module, prep: Prepared, plan: FeedbackPlan) -> Any:
        run_feedback, t_post = plan
        if not run_feedback:
            return plain_forward(adapter, model, prep)
        b, e = self.config.loop_start, self.config.loop_end
        blocks = adapter_blocks(adapter, model)
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
            if adapter.timestep_scale != 1.0:  # t_post is in the scheduler's units; the model takes its own
                t_post = t_post * adapter.timestep_scale
            cond_p = adapter.cond(model, prep, t_post.expand(prep.timestep.shape))
        scales = self.scales.to(image_stream(f).dtype)
        for j, i in enumerate(range(b, e + 1)):  # eqs. 2-3: g = B_i(g + s_i * f), stream by stream
            g = adapter.block(model, blocks[i], feed(g, scales[j], f), prep, cond_p)
        for i in range(e + 1, len(blocks)):
            g = adapter.block(model, blocks[i], g, prep, cond_p)
        return adapter.head(model, g, prep, cond_p)


def apply_feedback(target: Any, config: FeedbackConfig | dict[str, Any] | None = None,
                   scheduler: Any = None) -> nn.Module:
    """Attach Inner Loop Feedback (paper Sec. 3, METHOD.md) to a transformer or a stock pipeline.

    Creates the feedback block F (an eager copy of block e, or the class's fresh init with `init="fresh"`, in the
    dtype block e computes in, trainable) and the scales s (float32 zeros, shape (m,), m = e - b + 1), owned by
    the method, not registered on the model (read them as `model.ilf_feedback`, `model.ilf_scales` or with
    `feedback_parameters`); freezes every backbone parameter until `remove`. F and the scales are normal
    tensors (never inference tensors), whatever mode this or any later call runs in. In a pipeline call,
    feedback follows `config.feedback_steps` and `config.t_post` (eqs. 4-5) on the pipeline's (or the given)
    scheduler; a direct call outside a run runs feedback with t_post = t. Each call with feedback costs
    N + m + 1 block forwards, one without N.

    Args:
        target: a supported transformer (PixArt, DiT, FLUX.1, SD3, Qwen-Image, Sana, Wan:
            `ilf.adapters.supported()`) or a stock pipeline holding it (acts on `.transformer`, follows
            `.scheduler`); a `torch.compile` wrapper is looked through.
        config: the settings (`FeedbackConfig`, a dict of its fields, or None for the paper's defaults: loop
            over blocks 8..19).
        scheduler: the scheduler a bare transformer's calls follow (step index, t_post); a pipeline's own is
            used otherwise.

    Returns:
        The transformer, with ILF attached.

    Raises:
        ILFConfigError: a config field is outside what is allowed for this backbone (e.g. `loop_end >= N`, or
            SD3's `context_pre_only` last block as `loop_end`).
        UnsupportedModelError: the target is not a supported transformer or pipeline.
        AlreadyAttachedError: a method or peer is attached, or a stateful diffusers hook sits inside the blocks.

    Example:
        ```py
        import ilf
        import torch
        from diffusers import PixArtAlphaPipeline

        pipe = PixArtAlphaPipeline.from_pretrained("PixArt-alpha/PixArt-XL-2-512x512")
        model = ilf.apply_feedback(pipe, ilf.FeedbackConfig(loop_start=8, loop_end=19, feedback_steps="outer:4"))
        optimizer = torch.optim.AdamW(ilf.feedback_parameters(model), lr=1e-4)
        ```
    """
    config = as_config(config, FeedbackConfig)
    model, pipeline = resolve_target(target)
    check_free(model)
    blocks = model_blocks(model)
    num_blocks = len(blocks)
    config.validate(num_blocks)
    adapter = adapter_for(model)
    check = getattr(adapter, "check_feedback", None)  # optional: a family's own limits (SD3: loop_end < N - 1)
    if check is not None:
        check(model, config)
    block = make_feedback_block(model, config)
    ref_param = next(blocks[config.loop_end].parameters())
    shape = scale_shape(config, adapter)
    with torch.inference_mode(False):
        scales = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=ref_param.device))  # s_i = 0
    install(model, pipeline, FeedbackMethod(config, num_blocks, block, scales), scheduler, freeze=True)
    return model


def _attached_feedback(target: Any) -> tuple[nn.Module, FeedbackMethod]:
    model, _ = resolve_target(target)
    state = get_attachment(model)
    if state is None or getattr(state.method, "feedback", None) is None:
        raise ILFConfigError("target", type(model).__name__, "a model with ILF attached (call apply_feedback first)")
    return model, state.method


def feedback_parameters(target: Any) -> list[nn.Parameter]:
    """The trainable parameters of attached ILF: the feedback block's, then the scales.

    Args:
        target: a transformer or pipeline with ILF attached.

    Returns:
        F's parameters (in `F.parameters()` order, block e's compute dtype), then the scales (float32, (m,)):
        the same `Parameter` objects for as long as ILF stays attached, whatever device or dtype the model
        moves to.

    Raises:
        ILFConfigError: ILF is not attached.

    Example:
        ```py
        model = ilf.apply_feedback(pipe, ilf.FeedbackConfig(8, 19))
        optimizer = torch.optim.AdamW(ilf.feedback_parameters(model), lr=1e-4)
        ```
    """
    _, method = _attached_feedback(target)
    return list(method.feedback.parameters()) + [method.scales]


def set_feedback_block(target: Any, block: nn.Module) -> None:
    """Swap attached ILF's feedback block F (e.g. for a compiled copy); like F, it is not registered."""
    model, method = _attached_feedback(target)
    method.feedback = block
    model.__dict__[FEEDBACK_BLOCK] = block
