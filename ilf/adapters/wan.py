"""`WanTransformer3DModel` (Wan 2.1 / 2.2 text- and image-to-video): cond(t) = (temb, timestep_proj).

A single-stream backbone: the video tokens are the state; the text (and, for image-to-video, the CLIP image
tokens) enter every block through cross-attention and stay static. The time condition is the condition embedder's
time half, `temb` (B, D) for the head and `timestep_proj` (B, 6, D) for the blocks' modulation; the text half
(`text_embedder`, `image_embedder`) does not depend on t and is computed once per call in `prepare`.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..errors import UnsupportedModelError
from . import Prepared, argument, batch_timestep, call_block


def _check_lora_scale(model: nn.Module, attention_kwargs: dict[str, Any] | None) -> None:
    """The stock forward scales loaded LoRA layers by `attention_kwargs["scale"]` around the whole call; the
    pieces run outside that wrapper, so a scale other than 1 on a model with LoRA layers is refused."""
    scale = (attention_kwargs or {}).get("scale", 1.0)
    if scale != 1.0 and getattr(model, "_hf_peft_config_loaded", False):
        raise UnsupportedModelError(
            f"attention_kwargs['scale']={scale} (a LoRA scale) is not supported with a method attached to "
            "WanTransformer3DModel: fuse the LoRA at that scale first (pipe.fuse_lora(lora_scale=...)) or pass "
            "no scale")


class WanAdapter:
    """`WanTransformer3DModel.forward` in pieces (diffusers' `models/transformers/transformer_wan.py`).

    `WanPipeline` passes `t.expand(B)` with t from `scheduler.timesteps` (UniPC with flow sigmas: integer
    timesteps in [0, 1000); flow-matching Euler: sigma * 1000), so the model takes the scheduler's units. Wan 2.2
    TI2V's per-token timestep (`expand_timesteps=True`: a (B, tokens) timestep) is refused.
    """

    model_class = WanTransformer3DModel
    pipelines = ("WanPipeline", "WanImageToVideoPipeline")
    block_lists = ("blocks",)
    streams = ("image",)
    timestep_scale = 1.0  # the pipeline passes the scheduler's timestep

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return argument(args, kwargs, "timestep", 1)

    @staticmethod
    def prepare(model, hidden_states, timestep=None, encoder_hidden_states=None, encoder_hidden_states_image=None,
                return_dict=True, attention_kwargs=None) -> Prepared:
        # 1. Input (as WanTransformer3DModel.forward): rotary embedding, patch embedding, text and image tokens
        if torch.is_tensor(timestep) and timestep.ndim == 2:
            raise UnsupportedModelError(
                f"timestep of shape {tuple(timestep.shape)} (a per-token timestep, Wan 2.2 TI2V's "
                "expand_timesteps=True) is not supported: the adapter conditions every token on one timestep per sample")
        _check_lora_scale(model, attention_kwargs)
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = model.config.patch_size
        rotary_emb = model.rope(hidden_states)
        h = model.patch_embedding(hidden_states)
        h = h.flatten(2).transpose(1, 2).contiguous()  # (B, F*H*W tokens, D)
        text_dtype = encoder_hidden_states.dtype  # temb is cast to it (`type_as`)
        embedder = model.condition_embedder
        text = embedder.text_embedder(encoder_hidden_states)
        if encoder_hidden_states_image is not None:  # image-to-video: CLIP image tokens before the text
            text = torch.concat([embedder.image_embedder(encoder_hidden_states_image), text], dim=1)
        return Prepared(h, batch_timestep(timestep, batch_size, h.device), height // p_h, width // p_w, return_dict,
                        dict(encoder_hidden_states=text, rotary_emb=rotary_emb, frames=num_frames // p_t,
                             text_dtype=text_dtype, batch_size=batch_size))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond(t): (temb (B, D) for the head, timestep_proj (B, 6, D) for the blocks), the embedder's time half."""
        embedder = model.condition_embedder
        t = embedder.timesteps_proj(timestep)
        time_embedder_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if t.dtype != time_embedder_dtype and time_embedder_dtype != torch.int8:
            t = t.to(time_embedder_dtype)
        temb = embedder.time_embedder(t).to(prep.kwargs["text_dtype"])  # stock: type_as(encoder_hidden_states)
        timestep_proj = embedder.time_proj(embedder.act_fn(temb))
        return temb, timestep_proj.unflatten(1, (6, -1))

    @staticmethod
    def block(model, block: nn.Module, h: torch.Tensor, prep: Prepared, cond) -> torch.Tensor:
        # 2. One block at condition `cond` (its self-attention uses the rotary embedding, its cross-attention the text)
        k = prep.kwargs
        return call_block(model, block, h, (k["encoder_hidden_states"], cond[1], k["rotary_emb"]))

    @staticmethod
    def head(model, h: torch.Tensor, prep: Prepared, cond):
        # 3. Output norm, projection & unpatchify, modulated by the condition's temb
        temb = cond[0]
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(h.device), scale.to(h.device)
        h = (model.norm_out(h.float()) * (1 + scale) + shift).type_as(h)
        h = model.proj_out(h)
        p_t, p_h, p_w = model.config.patch_size
        h = h.reshape(prep.kwargs["batch_size"], prep.kwargs["frames"], prep.height, prep.width, p_t, p_h, p_w, -1)
        h = h.permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = h.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # (B, C, F, H, W)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTER = WanAdapter
