"""`PixArtTransformer2DModel` (PixArt-alpha and PixArt-sigma): cond(t) = adaLN-single modulation."""
from __future__ import annotations

from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from . import Prepared, argument, batch_timestep, call_block, unpatchify


class PixArtAdapter:
    """`PixArtTransformer2DModel.forward` in pieces (diffusers' `models/transformers/pixart_transformer_2d.py`)."""

    model_class = PixArtTransformer2DModel
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    block_lists = ("transformer_blocks",)
    streams = ("image",)
    timestep_scale = 1.0  # the model takes the scheduler's timestep

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return argument(args, kwargs, "timestep", 2)

    @staticmethod
    def prepare(model, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None,
                return_dict=True) -> Prepared:
        # 1. Input (as PixArtTransformer2DModel.forward)
        if model.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("`added_cond_kwargs` cannot be None when using additional conditions for `adaln_single`.")
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = (1 - attention_mask.to(hidden_states.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)
        batch_size = hidden_states.shape[0]
        p = model.config.patch_size
        height, width = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        h = model.pos_embed(hidden_states)  # (B, T, D)
        if model.caption_projection is not None:
            encoder_hidden_states = model.caption_projection(encoder_hidden_states)
            encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, h.shape[-1])
        return Prepared(h, batch_timestep(timestep, batch_size, h.device), height, width, return_dict,
                        dict(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                             cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                             encoder_attention_mask=encoder_attention_mask))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond(t): (block modulation (B, 6D), embedded timestep (B, D)) from adaLN-single."""
        return model.adaln_single(timestep, prep.kwargs["added_cond_kwargs"], batch_size=prep.hidden.shape[0],
                                  hidden_dtype=prep.hidden.dtype)

    @staticmethod
    def block(model, block: nn.Module, h: torch.Tensor, prep: Prepared, cond) -> torch.Tensor:
        # 2. One block at condition `cond`
        k = prep.kwargs
        return call_block(model, block, h, (k["attention_mask"], k["encoder_hidden_states"],
                                            k["encoder_attention_mask"], cond[0], k["cross_attention_kwargs"], None))

    @staticmethod
    def head(model, h: torch.Tensor, prep: Prepared, cond):
        # 3. Output (final layer at the condition's embedded timestep)
        embedded_timestep = cond[1]
        shift, scale = (model.scale_shift_table[None] + embedded_timestep[:, None].to(model.scale_shift_table.device)).chunk(2, dim=1)
        h = model.norm_out(h)
        h = h * (1 + scale.to(h.device)) + shift.to(h.device)
        h = model.proj_out(h)
        h = h.squeeze(1)
        out = unpatchify(h, prep.height, prep.width, model.config.patch_size, model.out_channels)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTER = PixArtAdapter
