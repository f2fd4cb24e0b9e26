"""`SD3Transformer2DModel` (Stable Diffusion 3 / 3.5 medium and large): joint image-text blocks (MMDiT).

State: `(image, text)`, image first (METHOD.md, "Multi-stream blocks"). Every `JointTransformerBlock` maps both
streams; the last one is `context_pre_only` and ends the text stream (its state's text entry is None). SD3.5
medium's first blocks (`dual_attention_layers`, `use_dual_attention`) add a second image self-attention inside
the block: the same interface. cond(t) = `time_text_embed(t, pooled_projections)` (temb, (B, D)).

Timesteps: `StableDiffusion3Pipeline` passes `scheduler.timesteps` as they are (FlowMatchEulerDiscreteScheduler:
sigma * 1000, shifted), so `timestep_scale` = 1.

Inputs beyond the plain call:
- `skip_layers` (skip-layer guidance, the pipeline's `skip_guidance_layers`): the listed blocks are not called
  in that forward, in every pass of every method (the feedback block F is never skipped); they are not
  counted. `skip_layer_guidance_forwards` gives the extra block forwards of a pipeline run with it.
- `joint_attention_kwargs` pass through; its `"scale"` (LoRA scale) is taken out as the stock forward's
  `apply_lora_scale` does, and refused when it is not 1 on a model carrying peft LoRA layers (the stock
  forward rescales them around the whole call, which a method's forward in pieces does not).
- refused (`ILFConfigError`): `block_controlnet_hidden_states` (controlnet residuals) and
  `joint_attention_kwargs["ip_adapter_image_embeds"]` (IP-Adapter: its time embedding would stay at t).
- F as a copy of the `context_pre_only` last block is refused (`check_feedback`): it would read a state whose
  text stream has ended, and such a block needs one.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..config import CacheConfig, FeedbackConfig, cached_block_indices
from ..errors import ILFConfigError
from ..schedule import resolve_feedback_steps
from . import Prepared, argument, batch_timestep, call_block, unpatchify
from ._lora import has_lora



class SD3Adapter:
    """`SD3Transformer2DModel.forward` in pieces (diffusers' `models/transformers/transformer_sd3.py`)."""

    model_class = SD3Transformer2DModel
    pipelines = ("StableDiffusion3Pipeline",)
    block_lists = ("transformer_blocks",)
    streams = ("image", "text")
    timestep_scale = 1.0  # the pipeline passes scheduler.timesteps (sigma * 1000) unchanged

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return argument(args, kwargs, "timestep", 3)

    @staticmethod
    def check_feedback(model: nn.Module, config: FeedbackConfig) -> None:
        """Refuse a loop ending at the `context_pre_only` last block (F would need the ended text stream).

        Raises:
            ILFConfigError: `loop_end` is the last block.
        """
        last = len(model.transformer_blocks) - 1
        if config.loop_end == last:
            raise ILFConfigError("loop_end", config.loop_end, f"a block index <= {last - 1} on "
                                 f"{type(model).__name__}: block {last} is context_pre_only (it ends the text "
                                 "stream), so a feedback block copied from it has no text stream to read")

    @staticmethod
    def prepare(model, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                block_controlnet_hidden_states=None, joint_attention_kwargs=None, return_dict=True,
                skip_layers=None) -> Prepared:
        # 1. Input (as SD3Transformer2DModel.forward and its `apply_lora_scale` decorator)
        if block_controlnet_hidden_states is not None:
            raise ILFConfigError("block_controlnet_hidden_states", "a list of residuals",
                                 "None: controlnet residuals are not supported with ILF, the cache or an "
                                 "extension method on SD3 (run the controlnet pipeline without them)")
        if joint_attention_kwargs is not None:
            joint_attention_kwargs = dict(joint_attention_kwargs)
            if "ip_adapter_image_embeds" in joint_attention_kwargs:
                raise ILFConfigError("joint_attention_kwargs", "ip_adapter_image_embeds",
                                     "no IP-Adapter image embeddings: IP-Adapter is not supported with ILF, the "
                                     "cache or an extension method on SD3")
            scale = joint_attention_kwargs.pop("scale", 1.0)
            if scale != 1.0 and has_lora(model):
                raise ILFConfigError("joint_attention_kwargs", f"scale={scale}",
                                     "no LoRA scale other than 1 with ILF, the cache or an extension method "
                                     "(set the adapter weight with set_adapters, or fuse_lora(lora_scale=...))")
        height, width = hidden_states.shape[-2:]
        p = model.config.patch_size
        h = model.pos_embed(hidden_states).contiguous()  # (B, T, D), positional embedding added
        batch = batch_timestep(timestep, h.shape[0], h.device)
        context = model.context_embedder(encoder_hidden_states)  # (B, L, D)
        blocks = model.transformer_blocks
        skipped = frozenset(id(blocks[i]) for i in (skip_layers or ()) if 0 <= i < len(blocks))
        return Prepared((h, context), batch, height // p, width // p, return_dict,
                        dict(pooled_projections=pooled_projections, joint_attention_kwargs=joint_attention_kwargs,
                             skipped=skipped))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> torch.Tensor:
        """cond(t): temb = timestep embedding + pooled text projection, (B, D)."""
        return model.time_text_embed(timestep, prep.kwargs["pooled_projections"])

    @staticmethod
    def block(model, block: nn.Module, h: tuple, prep: Prepared, cond) -> tuple:
        # 2. One joint block at condition `cond`: (image, text) -> (image, text or None)
        if id(block) in prep.kwargs["skipped"]:  # skip-layer guidance: not called
            return h
        image, text = h
        text, image = call_block(model, block, image, (text, cond, prep.kwargs["joint_attention_kwargs"]))
        return (image, text)

    @staticmethod
    def head(model, h: tuple, prep: Prepared, cond):
        # 3. Output (final AdaLN at temb, projection, unpatchify)
        out = model.proj_out(model.norm_out(h[0], cond))
        out = unpatchify(out, prep.height, prep.width, model.config.patch_size, model.out_channels)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


def skip_layer_guidance_steps(num_steps: int, start: float = 0.01, stop: float = 0.2) -> list[int]:
    """The steps on which `StableDiffusion3Pipeline` makes its extra skip-layer call: start*S < i < stop*S."""
    return [i for i in range(num_steps) if num_steps * start < i < num_steps * stop]


def skip_layer_guidance_forwards(config: FeedbackConfig | CacheConfig | None, num_blocks: int, num_steps: int,
                                 skip_layers: list[int], start: float = 0.01, stop: float = 0.2) -> int:
    """Block forwards the skip-layer calls of one `StableDiffusion3Pipeline` run add (beside
    `expected_block_forwards`), with `skip_guidance_layers=skip_layers` and classifier-free guidance.

    On each step i with start*S < i < stop*S the pipeline calls the transformer once more (the cond batch) with
    `skip_layers`; the method runs that call too, with the listed blocks K not called:
    plain N - |K|; ILF (on a feedback step) N - |K| + m - |K in b..e| + 1; the cache (its own call slot, so
    recomputing on its first skip-layer call and on steps i % k == 0) N - |K| then, else N - |K| - |C - K|.

    Args:
        config: None (plain), a `FeedbackConfig` or a `CacheConfig`.
        num_blocks: N.
        num_steps: S.
        skip_layers: the pipeline's `skip_guidance_layers` (block indices).
        start: `skip_layer_guidance_start`.
        stop: `skip_layer_guidance_stop`.

    Returns:
        The extra block forwards of the run (per image).
    """
    n, skip = num_blocks, {i for i in skip_layers if 0 <= i < num_blocks}
    steps = skip_layer_guidance_steps(num_steps, start, stop)
    base = n - len(skip)
    if config is None:
        return base * len(steps)
    if isinstance(config, FeedbackConfig):
        fb = set(resolve_feedback_steps(config.feedback_steps, num_steps))
        loop = set(range(config.loop_start, config.loop_end + 1))
        extra = config.loop_size - len(skip & loop) + 1
        return sum(base + (extra if i in fb else 0) for i in steps)
    cached = set(cached_block_indices(config, n))
    total = 0
    for j, i in enumerate(steps):
        recompute = j == 0 or i % config.interval == 0
        total += base if recompute else base - len(cached - skip)
    return total


ADAPTER = SD3Adapter
