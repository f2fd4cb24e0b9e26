"""`DiTTransformer2DModel`: every block embeds (t, class) itself through its AdaLayerNormZero."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from . import Prepared, argument, batch_timestep, call_block, unpatchify


class DiTAdapter:
    """`DiTTransformer2DModel.forward` in pieces (diffusers' `models/transformers/dit_transformer_2d.py`)."""

    model_class = DiTTransformer2DModel
    pipelines = ("DiTPipeline",)
    block_lists = ("transformer_blocks",)
    streams = ("image",)
    timestep_scale = 1.0  # the model takes the scheduler's timestep

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return argument(args, kwargs, "timestep", 1)

    @staticmethod
    def prepare(model, hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None,
                return_dict=True) -> Prepared:
        # 1. Input (as DiTTransformer2DModel.forward)
        height, width = hidden_states.shape[-2] // model.patch_size, hidden_states.shape[-1] // model.patch_size
        h = model.pos_embed(hidden_states)
        return Prepared(h, batch_timestep(timestep, h.shape[0], h.device), height, width, return_dict,
                        dict(class_labels=class_labels, cross_attention_kwargs=cross_attention_kwargs))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> torch.Tensor:
        """cond(t) is the raw timestep: each DiT block embeds it with the class label."""
        return timestep

    @staticmethod
    def block(model, block: nn.Module, h: torch.Tensor, prep: Prepared, cond) -> torch.Tensor:
        k = prep.kwargs
        return call_block(model, block, h, (None, None, None, cond, k["cross_attention_kwargs"], k["class_labels"]))

    @staticmethod
    def head(model, h: torch.Tensor, prep: Prepared, cond):
        # 3. Output: the final layer is modulated by block 0's embedder at the condition's timestep
        conditioning = model.transformer_blocks[0].norm1.emb(cond, prep.kwargs["class_labels"], hidden_dtype=h.dtype)
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        h = model.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        h = model.proj_out_2(h)
        side = int(h.shape[1] ** 0.5)
        out = unpatchify(h, side, side, model.patch_size, model.out_channels)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTER = DiTAdapter
