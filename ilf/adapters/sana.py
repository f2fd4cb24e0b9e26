"""`SanaTransformer2DModel` (Sana, Xie et al. 2024): linear-attention blocks with caption cross-attention.

cond(t) is adaLN-single (or, for the guidance-distilled variant with `guidance_embeds`, the sum of the timestep
and guidance embeddings): one (B, 6D) modulation for every block and the embedded timestep for the head.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import SanaTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..errors import UnsupportedModelError
from . import Prepared, argument, batch_timestep, call_block
from ._lora import check_lora_scale


class SanaAdapter:
    """`SanaTransformer2DModel.forward` in pieces (diffusers' `models/transformers/sana_transformer.py`)."""

    model_class = SanaTransformer2DModel
    pipelines = ("SanaPipeline",)
    block_lists = ("transformer_blocks",)
    streams = ("image",)
    timestep_scale = 1.0  # SanaPipeline passes t * config.timestep_scale, which is 1.0 for Sana's released models

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return argument(args, kwargs, "timestep", 2)

    @staticmethod
    def prepare(model, hidden_states, encoder_hidden_states, timestep, guidance=None, encoder_attention_mask=None,
                attention_mask=None, attention_kwargs=None, controlnet_block_samples=None,
                return_dict=True) -> Prepared:
        if controlnet_block_samples is not None:
            raise UnsupportedModelError("controlnet_block_samples is not supported with a method attached to "
                                        "SanaTransformer2DModel (SanaControlNetPipeline): call ilf.remove first")
        check_lora_scale(model, attention_kwargs)  # the blocks take no attention kwargs: only LoRA's scale acts
        # masks -> additive biases with a singleton query dimension (as the stock forward)
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = (1 - attention_mask.to(hidden_states.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)
        # 1. Input
        batch_size, _, height, width = hidden_states.shape
        p = model.config.patch_size
        h = model.patch_embed(hidden_states)  # (B, T, D)
        encoder_hidden_states = model.caption_projection(encoder_hidden_states)
        encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, h.shape[-1])
        encoder_hidden_states = model.caption_norm(encoder_hidden_states)
        return Prepared(h, batch_timestep(timestep, batch_size, h.device), height // p, width // p, return_dict,
                        dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                             encoder_attention_mask=encoder_attention_mask, guidance=guidance))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond(t): (block modulation (B, 6D), embedded timestep (B, D)); with `guidance`, its embedding is added."""
        guidance = prep.kwargs["guidance"]
        if guidance is not None:
            return model.time_embed(timestep, guidance=guidance, hidden_dtype=prep.hidden.dtype)
        return model.time_embed(timestep, batch_size=prep.hidden.shape[0], hidden_dtype=prep.hidden.dtype)

    @staticmethod
    def block(model, block: nn.Module, h: torch.Tensor, prep: Prepared, cond) -> torch.Tensor:
        # 2. One block at condition `cond`
        k = prep.kwargs
        return call_block(model, block, h, (k["attention_mask"], k["encoder_hidden_states"],
                                            k["encoder_attention_mask"], cond[0], prep.height, prep.width))

    @staticmethod
    def head(model, h: torch.Tensor, prep: Prepared, cond):
        # 3. Normalization at the condition's embedded timestep, 5. Unpatchify
        h = model.norm_out(h, cond[1], model.scale_shift_table)
        h = model.proj_out(h)
        p, batch_size = model.config.patch_size, h.shape[0]
        h = h.reshape(batch_size, prep.height, prep.width, p, p, -1)
        h = h.permute(0, 5, 1, 3, 2, 4)
        out = h.reshape(batch_size, -1, prep.height * p, prep.width * p)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTER = SanaAdapter
