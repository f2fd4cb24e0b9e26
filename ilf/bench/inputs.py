"""Sampling inputs and loops of the flow-matching families for `ilf bench`: FLUX.1, SD3.5, Qwen-Image, Wan 2.1.

Each family's inputs are what its stock pipeline hands the transformer, with fixed random text embeddings of the
real shapes (the text encoders and the VAE are outside the timing), built with the pipeline's own static helpers
where it has them:

    FLUX.1       packed latents (`FluxPipeline._pack_latents`), `img_ids` (`_prepare_latent_image_ids`), zero
                 `txt_ids`, T5 embeddings (L x 4096), pooled CLIP (768), the distilled `guidance` (dev; one call)
    SD3.5        latents (B, 16, H/8, W/8), CLIP + T5 embeddings (77 + L tokens x 4096), pooled (2048);
                 classifier-free guidance as one batch [uncond, cond]
    Qwen-Image   packed latents (`QwenImagePipeline._pack_latents`), `img_shapes`, Qwen2.5-VL embeddings
                 (L x 3584) with their masks; true CFG as two calls per step ("cond", "uncond") with the
                 pipeline's norm rescale
    Wan 2.1      video latents (B, 16, (F-1)/4+1, H/8, W/8), umT5 embeddings (L x 4096); CFG as two calls per step

`sample_flow` re-states the denoising loops of `FluxPipeline`, `StableDiffusion3Pipeline`, `QwenImagePipeline` and
`WanPipeline.__call__` (timesteps from the pipeline's scheduler config, with FLUX's and Qwen-Image's
resolution-dependent shift `mu`), so a benchmark times the transformer calls and scheduler steps of a real run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..registry import BackboneSpec

# The schedulers of the pipelines (scheduler/scheduler_config.json of each hub repo, as published)
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
FLUX_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
QWEN_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                      base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
WAN_SCHEDULER = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                     flow_shift=3.0)  # UniPC, 480p (720p: flow_shift 5.0)
# The model cards' guidance scales (FLUX.1-dev: distilled guidance embedded, no CFG batch; schnell: none)
GUIDANCE = {"flux1-dev": 3.5, "flux1-schnell": 0.0, "sd35-medium": 4.5, "sd35-large": 3.5, "qwen-image": 4.0,
            "wan21-t2v-1.3b": 5.0, "wan21-t2v-14b": 5.0}
FAMILY_CLASSES = ("FluxTransformer2DModel", "SD3Transformer2DModel", "QwenImageTransformer2DModel",
                  "WanTransformer3DModel")
TWO_CALL_CFG = ("QwenImageTransformer2DModel", "WanTransformer3DModel")  # guidance as two calls per step
SD3_CLIP_TOKENS = 77  # SD3 concatenates CLIP-L/G's 77 tokens before T5's


def calls_per_step(spec: BackboneSpec, guidance_scale: float) -> int:
    """Transformer calls per sampling step of the stock pipeline (2: guidance as separate cond / uncond calls)."""
    return 2 if spec.transformer_class in TWO_CALL_CFG and guidance_scale > 1 else 1


@dataclass
class FlowInputs:
    """Everything one flow-matching sampling run needs besides the model and scheduler (made once, reused).

    `cond` / `uncond` are the transformer's keyword inputs besides `hidden_states` and `timestep`; `uncond` is set
    where guidance runs as a second call per step; `batched_cfg` puts [uncond, cond] in one call (SD3).
    """

    latents: torch.Tensor  # initial noise as the transformer takes it (packed for FLUX / Qwen-Image)
    guidance_scale: float
    cond: dict[str, Any] = field(default_factory=dict)
    uncond: dict[str, Any] | None = None
    batched_cfg: bool = False
    timestep_divisor: float = 1.0  # the pipeline passes t / divisor (FLUX, Qwen-Image: 1000)
    mu: float | None = None  # the resolution-dependent shift (schedulers with use_dynamic_shifting)
    linspace_sigmas: bool = False  # the pipeline passes sigmas = linspace(1, 1/S, S)
    rescale_norm: bool = False  # Qwen-Image: the guided prediction keeps the cond prediction's norm
    sequences: int = 1  # sequences per transformer call (a batched CFG call: 2 x batch)


def scheduler_for(spec: BackboneSpec) -> Any:
    """The pipeline's own scheduler of a flow-matching backbone (FlowMatchEuler; Wan: UniPC with flow sigmas)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    cls = spec.transformer_class
    if cls == "WanTransformer3DModel":
        return UniPCMultistepScheduler(**WAN_SCHEDULER)
    if cls == "FluxTransformer2DModel":
        guided = spec.transformer_config.get("guidance_embeds", False)
        return FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if guided else FLUX_SCHNELL_SCHEDULER))
    return FlowMatchEulerDiscreteScheduler(**(QWEN_SCHEDULER if cls == "QwenImageTransformer2DModel" else SD3_SCHEDULER))


def _shift(scheduler_config: dict[str, Any], image_seq_len: int) -> float:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler_config
    return calculate_shift(image_seq_len, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"], c["max_shift"])


def make_flow_inputs(model: nn.Module, spec: BackboneSpec, batch: int, height: int, width: int, num_frames: int,
                     guidance_scale: float, seed: int, text_tokens: int, device: Any, dtype: torch.dtype) -> FlowInputs:
    """Seeded noise and stand-in text embeddings of the real shapes for `batch` samples at `height` x `width` px.

    Args:
        model: the family's transformer (its config gives the channels and text widths).
        spec: its registry entry.
        batch: images (videos) per sampling run.
        height, width: pixels (multiples of 16).
        num_frames: video frames (Wan; 4k + 1), ignored for images.
        guidance_scale: the pipeline's guidance (> 1: CFG where the family runs it).
        seed: of the noise and the embeddings.
        text_tokens: prompt tokens L (SD3: T5's, the 77 CLIP tokens come on top).
        device, dtype: of the inputs.

    Returns:
        The `FlowInputs` the family's stock pipeline would hand its transformer.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    cls = type(model).__name__

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    if cls == "FluxTransformer2DModel":
        from diffusers import FluxPipeline

        h, w, c = 2 * (height // 16), 2 * (width // 16), cfg.in_channels // 4
        latents = FluxPipeline._pack_latents(torch.randn(batch, c, h, w, generator=g), batch, c, h, w).to(device, dtype)
        cond = dict(encoder_hidden_states=randn(batch, text_tokens, cfg.joint_attention_dim),
                    pooled_projections=randn(batch, cfg.pooled_projection_dim),
                    img_ids=FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, device, dtype),
                    txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype),
                    guidance=torch.full([batch], guidance_scale, device=device, dtype=torch.float32)
                    if cfg.guidance_embeds else None)
        mu = _shift(FLUX_DEV_SCHEDULER, latents.shape[1]) if cfg.guidance_embeds else None
        return FlowInputs(latents, guidance_scale, cond, timestep_divisor=1000, mu=mu, linspace_sigmas=True,
                          sequences=batch)
    if cls == "SD3Transformer2DModel":
        rows = 2 * batch if guidance_scale > 1 else batch  # [negative, positive] as the pipeline concatenates
        latents = randn(batch, cfg.in_channels, height // 8, width // 8)
        cond = dict(encoder_hidden_states=randn(rows, SD3_CLIP_TOKENS + text_tokens, cfg.joint_attention_dim),
                    pooled_projections=randn(rows, cfg.pooled_projection_dim))
        return FlowInputs(latents, guidance_scale, cond, batched_cfg=guidance_scale > 1, sequences=rows)
    if cls == "QwenImageTransformer2DModel":
        from diffusers import QwenImagePipeline

        h, w, c = 2 * (height // 16), 2 * (width // 16), cfg.in_channels // 4
        latents = QwenImagePipeline._pack_latents(torch.randn(batch, 1, c, h, w, generator=g), batch, c, h, w)
        latents = latents.to(device, dtype)

        def text() -> dict[str, Any]:
            return dict(encoder_hidden_states=randn(batch, text_tokens, cfg.joint_attention_dim),
                        encoder_hidden_states_mask=torch.ones(batch, text_tokens, dtype=torch.long, device=device),
                        img_shapes=[[(1, h // 2, w // 2)]] * batch)
        cond = text()
        uncond = text() if guidance_scale > 1 else None
        return FlowInputs(latents, guidance_scale, cond, uncond, timestep_divisor=1000,
                          mu=_shift(QWEN_SCHEDULER, latents.shape[1]), linspace_sigmas=True, rescale_norm=True,
                          sequences=batch)
    if cls == "WanTransformer3DModel":
        frames = (num_frames - 1) // 4 + 1  # the VAE's temporal factor 4
        latents = randn(batch, cfg.in_channels, frames, height // 8, width // 8)
        cond = dict(encoder_hidden_states=randn(batch, text_tokens, cfg.text_dim))
        uncond = dict(encoder_hidden_states=randn(batch, text_tokens, cfg.text_dim)) if guidance_scale > 1 else None
        return FlowInputs(latents, guidance_scale, cond, uncond, sequences=batch)
    raise ValueError(f"no flow-matching bench inputs for {cls}")


def _call(model: nn.Module, context: str, x: torch.Tensor, timestep: torch.Tensor, kwargs: dict[str, Any],
          before_call: Callable[[], Any]) -> torch.Tensor:
    """One transformer call in the pipeline's cache context ("cond" / "uncond"), as the stock pipelines make it."""
    before_call()
    cache_context = getattr(model, "cache_context", None)
    if cache_context is None:
        return model(hidden_states=x, timestep=timestep, return_dict=False, **kwargs)[0]
    with cache_context(context):
        return model(hidden_states=x, timestep=timestep, return_dict=False, **kwargs)[0]


def sample_flow(model: nn.Module, scheduler: Any, inputs: FlowInputs, num_steps: int,
                before_call: Callable[[], Any]) -> torch.Tensor:
    """One sampling run of a flow-matching family (its pipeline's denoising loop); returns the final latents."""
    device = inputs.latents.device
    kwargs: dict[str, Any] = {}
    if inputs.linspace_sigmas:
        kwargs["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
    if inputs.mu is not None:
        kwargs["mu"] = inputs.mu
    scheduler.set_timesteps(num_steps if "sigmas" not in kwargs else None, device=device, **kwargs)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    latents = inputs.latents
    g = inputs.guidance_scale
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2) if inputs.batched_cfg else latents
        timestep = t.expand(x.shape[0])
        if inputs.timestep_divisor != 1:  # FluxPipeline / QwenImagePipeline: t.expand(B).to(dtype) / 1000
            timestep = timestep.to(latents.dtype) / inputs.timestep_divisor
        pred = _call(model, "cond", x, timestep, inputs.cond, before_call)
        if inputs.batched_cfg:
            uncond, text = pred.chunk(2)
            pred = uncond + g * (text - uncond)
        elif inputs.uncond is not None:
            neg = _call(model, "uncond", x, timestep, inputs.uncond, before_call)
            guided = neg + g * (pred - neg)
            if inputs.rescale_norm:
                guided = guided * (pred.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
            pred = guided
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents
