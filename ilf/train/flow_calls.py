"""One transformer call of a flow-matching backbone in training, built per family as its stock pipeline builds it.

Each family has two small functions: `*_inputs(transformer, batch, guidance)`, the call's conditioning from a
collated batch (float32 embeddings as the latent shards give them), and `*_velocity(transformer, x, model_t,
kwargs)`, the velocity v(x, t) (B, C, H, W) in float32 for latents x (B, C, H, W) and the model's own time
`model_t` (B,) float32 (`ilf.train.flow.FlowObjective.time_scale`). Latents and embeddings enter in the model's
dtype, as the pipelines pass them.

  FLUX.1   `FluxPipeline`: latents packed 2x2 (`_pack_latents`), `img_ids` (`_prepare_latent_image_ids`), txt_ids
           zeros, guidance embedding; no caption mask.
  SD3.5    `StableDiffusion3Pipeline`: latents as they are, prompt and pooled embeddings; no caption mask.
  Qwen     `QwenImagePipeline`: latents packed 2x2 (`QwenImagePipeline._pack_latents` / `_unpack_latents`),
           `img_shapes` [[(1, H/2, W/2)]] per sample, `encoder_hidden_states_mask` (None where every token is
           valid, as `QwenImagePipeline.encode_prompt` returns it).
  Sana     `SanaPipeline`: latents as they are, `encoder_attention_mask`; a learned-sigma output's first C channels.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import (FluxPipeline, FluxTransformer2DModel, QwenImagePipeline, QwenImageTransformer2DModel,
                       SanaTransformer2DModel, SD3Transformer2DModel)
from torch import nn

InputsFn = Callable[[nn.Module, dict[str, torch.Tensor], float], dict[str, Any]]
VelocityFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]

_EMBEDDINGS = ("encoder_hidden_states", "pooled_projections", "txt_ids")  # cast to the model's dtype


def _in_dtype(transformer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    dtype = transformer.dtype
    return x.to(dtype), {k: v.to(dtype) if k in _EMBEDDINGS else v for k, v in kwargs.items()}


def pooled_inputs(transformer: nn.Module, batch: dict[str, torch.Tensor], guidance: float) -> dict[str, Any]:
    """FLUX/SD3: prompt and pooled embeddings (FLUX also txt_ids, guidance). No caption mask: FluxPipeline and
    StableDiffusion3Pipeline attend to every (padded) T5 token."""
    emb, pooled = batch["prompt_embeds"], batch["pooled_prompt_embeds"]
    kwargs = {"encoder_hidden_states": emb, "pooled_projections": pooled}
    if isinstance(transformer, FluxTransformer2DModel):
        kwargs["txt_ids"] = torch.zeros(emb.shape[1], 3, device=emb.device, dtype=emb.dtype)  # FluxPipeline.encode_prompt
        if transformer.config.guidance_embeds:  # FluxPipeline: torch.full([1], guidance_scale).expand(batch)
            kwargs["guidance"] = torch.full([1], guidance, device=emb.device, dtype=torch.float32).expand(emb.shape[0])
    return kwargs


def flux_velocity(transformer: nn.Module, x: torch.Tensor, model_t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """FluxPipeline's call: x packed 2x2 with its `img_ids`, the output unpacked (`FluxPipeline._unpack_latents`)."""
    x, kwargs = _in_dtype(transformer, x, kwargs)
    b, c, h, w = x.shape
    packed = FluxPipeline._pack_latents(x, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
    out = transformer(packed, timestep=model_t, img_ids=img_ids, return_dict=False, **kwargs)[0]
    return FluxPipeline._unpack_latents(out, h, w, 1).float()


def sd3_velocity(transformer: nn.Module, x: torch.Tensor, model_t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """StableDiffusion3Pipeline's call: the latents as they are."""
    x, kwargs = _in_dtype(transformer, x, kwargs)
    return transformer(x, timestep=model_t, return_dict=False, **kwargs)[0].float()


def qwen_inputs(transformer: nn.Module, batch: dict[str, torch.Tensor], guidance: float) -> dict[str, Any]:
    """QwenImagePipeline's conditioning: `encoder_hidden_states` and `encoder_hidden_states_mask`, the mask None
    when every token of the micro-batch is valid (`QwenImagePipeline.encode_prompt` returns None then). Qwen-Image
    has no guidance embedding (`guidance` is unused)."""
    mask = batch["prompt_attention_mask"]
    return {"encoder_hidden_states": batch["prompt_embeds"],
            "encoder_hidden_states_mask": None if bool(mask.all()) else mask}


def qwen_velocity(transformer: nn.Module, x: torch.Tensor, model_t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """QwenImagePipeline's call: x packed 2x2 (`QwenImagePipeline._pack_latents`), `img_shapes` of one frame of
    (H/2, W/2) patches per sample, the output unpacked (`_unpack_latents`, vae_scale_factor 1: x is the latent
    grid) from (B, C, 1, H, W) to (B, C, H, W)."""
    x, kwargs = _in_dtype(transformer, x, kwargs)
    b, c, h, w = x.shape
    packed = QwenImagePipeline._pack_latents(x, b, c, h, w)
    img_shapes = [[(1, h // 2, w // 2)]] * b
    out = transformer(hidden_states=packed, timestep=model_t, img_shapes=img_shapes, return_dict=False, **kwargs)[0]
    return QwenImagePipeline._unpack_latents(out, h, w, 1)[:, :, 0].float()


def sana_inputs(transformer: nn.Module, batch: dict[str, torch.Tensor], guidance: float) -> dict[str, Any]:
    """SanaPipeline's conditioning: `encoder_hidden_states` and `encoder_attention_mask` (padded Gemma tokens are
    masked out). Sana's guidance-embedding variant is not trained here (`guidance` is unused)."""
    return {"encoder_hidden_states": batch["prompt_embeds"], "encoder_attention_mask": batch["prompt_attention_mask"]}


def sana_velocity(transformer: nn.Module, x: torch.Tensor, model_t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """SanaPipeline's call: the latents as they are; with a learned sigma (out_channels = 2C) the first C channels,
    as the pipeline keeps them."""
    x, kwargs = _in_dtype(transformer, x, kwargs)
    out = transformer(x, timestep=model_t, return_dict=False, **kwargs)[0].float()
    if transformer.config.out_channels // 2 == x.shape[1]:
        out = out.chunk(2, dim=1)[0]
    return out


#: model class -> (conditioning of a batch, velocity of one call)
FAMILY_CALLS: dict[type, tuple[InputsFn, VelocityFn]] = {
    FluxTransformer2DModel: (pooled_inputs, flux_velocity),
    SD3Transformer2DModel: (pooled_inputs, sd3_velocity),
    QwenImageTransformer2DModel: (qwen_inputs, qwen_velocity),
    SanaTransformer2DModel: (sana_inputs, sana_velocity),
}


def family_calls(transformer: nn.Module) -> tuple[InputsFn, VelocityFn]:
    """The (inputs, velocity) functions of the transformer's family (`FAMILY_CALLS`).

    Raises:
        TypeError: the transformer is of no flow-matching family trained here.
    """
    for cls, fns in FAMILY_CALLS.items():
        if isinstance(transformer, cls):
            return fns
    raise TypeError(f"no flow-matching training call for {type(transformer).__name__}")
