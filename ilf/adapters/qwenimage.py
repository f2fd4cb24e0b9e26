"""`QwenImageTransformer2DModel` (Qwen-Image): dual-stream MMDiT blocks over (image, text) with joint attention.

The state is the tuple (image stream, text stream) through every block (a block returns both); cond(t) is the
timestep embedding `temb` that every block's `img_mod` / `txt_mod` and the output norm read. The pipeline passes
t / 1000, so `timestep_scale` is 1/1000.
"""
from __future__ import annotations

from math import prod
from typing import Any

import torch
from diffusers import QwenImageTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_qwenimage import compute_text_seq_len_from_mask
from torch import nn

from ..errors import UnsupportedModelError
from . import Prepared, State, argument, batch_timestep, call_block
from ._lora import check_lora_scale


class QwenImageAdapter:
    """`QwenImageTransformer2DModel.forward` in pieces (diffusers' `models/transformers/transformer_qwenimage.py`)."""

    model_class = QwenImageTransformer2DModel
    pipelines = ("QwenImagePipeline",)
    block_lists = ("transformer_blocks",)
    streams = ("image", "text")
    timestep_scale = 1 / 1000  # QwenImagePipeline passes t / 1000

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The call's timestep in the scheduler's units (the argument times 1000; host side, for the step lookup)."""
        timestep = argument(args, kwargs, "timestep", 3)
        return None if timestep is None else timestep * 1000

    @staticmethod
    def prepare(model, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None, timestep=None,
                img_shapes=None, guidance=None, attention_kwargs=None, controlnet_block_samples=None,
                additional_t_cond=None, return_dict=True) -> Prepared:
        for name, value in (("controlnet_block_samples", controlnet_block_samples), ("guidance", guidance)):
            if value is not None:  # the stock class builds no guidance embedder: its `guidance` path cannot run
                raise UnsupportedModelError(f"{name} is not supported with a method attached to "
                                            "QwenImageTransformer2DModel: call ilf.remove first")
        check_lora_scale(model, attention_kwargs)
        if attention_kwargs is not None:  # as `apply_lora_scale`: the blocks get the kwargs without `scale`
            attention_kwargs = {k: v for k, v in attention_kwargs.items() if k != "scale"}
        # 1. Input
        h = model.img_in(hidden_states)
        timestep = timestep.to(h.dtype)
        modulate_index = None
        if model.zero_cond_t:  # per token: 0 for the generated image, 1 for the reference images after it
            modulate_index = torch.tensor(
                [[0] * prod(sample[0]) + [1] * sum(prod(s) for s in sample[1:]) for sample in img_shapes],
                device=timestep.device, dtype=torch.int)
        encoder_hidden_states = model.txt_norm(encoder_hidden_states)
        encoder_hidden_states = model.txt_in(encoder_hidden_states)
        text_seq_len, _, encoder_hidden_states_mask = compute_text_seq_len_from_mask(encoder_hidden_states,
                                                                                     encoder_hidden_states_mask)
        image_rotary_emb = model.pos_embed(img_shapes, max_txt_seq_len=text_seq_len, device=h.device)
        _, height, width = img_shapes[0][0][-3:] if img_shapes else (0, 0, 0)
        return Prepared((h, encoder_hidden_states), batch_timestep(timestep, h.shape[0], h.device), int(height),
                        int(width), return_dict,
                        dict(encoder_hidden_states_mask=encoder_hidden_states_mask, image_rotary_emb=image_rotary_emb,
                             attention_kwargs=attention_kwargs, modulate_index=modulate_index,
                             additional_t_cond=additional_t_cond))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> torch.Tensor:
        """cond(t): the timestep embedding temb (B, D) in the model's units (with `zero_cond_t`: (2B, D), the
        second half at t = 0 for the reference images)."""
        image = prep.hidden[0]
        timestep = timestep.to(image.dtype)
        if model.zero_cond_t:
            timestep = torch.cat([timestep, timestep * 0], dim=0)
        return model.time_text_embed(timestep, image, prep.kwargs["additional_t_cond"])

    @staticmethod
    def block(model, block: nn.Module, h: State, prep: Prepared, cond) -> State:
        # 2. One dual-stream block at condition `cond`: (image, text) -> (image, text)
        image, text = h
        k = prep.kwargs
        text, image = call_block(model, block, image, (text, k["encoder_hidden_states_mask"], cond,
                                                       k["image_rotary_emb"], k["attention_kwargs"],
                                                       k["modulate_index"]))
        return (image, text)

    @staticmethod
    def head(model, h: State, prep: Prepared, cond):
        # 3. Output: the image stream through the norm at the condition's temb and the projection
        temb = cond.chunk(2, dim=0)[0] if model.zero_cond_t else cond
        out = model.proj_out(model.norm_out(h[0], temb))
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTER = QwenImageAdapter
