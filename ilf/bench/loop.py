"""The sampling loop a stock pipeline runs, without its text encoder and VAE (they are outside the timing).

`sample` re-states the denoising loop of diffusers' `PixArtAlphaPipeline.__call__` / `PixArtSigmaPipeline`
and `DiTPipeline.__call__` (classifier-free guidance batch, learned-sigma split, `scheduler.step`), so that a
benchmark times exactly the transformer calls and scheduler steps of a real sampling run. The caption
embeddings (T5 output, 120 or 300 tokens of 4096 channels) and class labels are fixed random inputs of
the real shapes. A test checks the loop against the stock PixArt pipeline. The flow-matching families
(FLUX.1, SD3.5, Qwen-Image, Wan) have their inputs and loop in `inputs.py`; `sample` dispatches on the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers import DiTTransformer2DModel
from torch import nn


@dataclass
class SamplingInputs:
    """Everything one sampling run needs besides the model and scheduler (made once, reused every run)."""

    latents: torch.Tensor  # (batch, C, h, w) initial noise
    guidance_scale: float
    cond: dict[str, Any] = field(default_factory=dict)  # transformer keyword inputs, CFG batch (uncond first)


def make_inputs(model: nn.Module, batch: int, resolution: int, guidance_scale: float, seed: int = 0,
                text_tokens: int = 120, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> SamplingInputs:
    """Seeded noise and stand-in conditions of the real shapes for `batch` images at `resolution` pixels."""
    g = torch.Generator().manual_seed(seed)
    side = resolution // 8  # the VAE's downsampling factor for PixArt and DiT
    latents = torch.randn(batch, model.config.in_channels, side, side, generator=g).to(device, dtype)
    cfg = guidance_scale > 1
    if isinstance(model, DiTTransformer2DModel):
        labels = torch.randint(0, 1000, (batch,), generator=g)
        if cfg:
            labels = torch.cat([labels, torch.full((batch,), 1000)])  # the null class, as DiTPipeline
        return SamplingInputs(latents, guidance_scale, dict(class_labels=labels.to(device)))
    caption_dim = model.config.caption_channels
    emb = torch.randn(batch, text_tokens, caption_dim, generator=g)
    mask = torch.ones(batch, text_tokens, dtype=torch.long)
    if cfg:  # PixArt pipelines concatenate [negative, positive]
        emb = torch.cat([torch.randn(batch, text_tokens, caption_dim, generator=g), emb])
        mask = torch.cat([mask, mask])
    rows = emb.shape[0]
    added = {"resolution": None, "aspect_ratio": None}
    if model.use_additional_conditions:
        added = {"resolution": torch.tensor([[resolution, resolution]] * rows, dtype=dtype, device=device),
                 "aspect_ratio": torch.tensor([[1.0]] * rows, dtype=dtype, device=device)}
    return SamplingInputs(latents, guidance_scale, dict(encoder_hidden_states=emb.to(device, dtype),
                                                        encoder_attention_mask=mask.to(device),
                                                        added_cond_kwargs=added))


def sample(model: nn.Module, scheduler: Any, inputs: SamplingInputs, num_steps: int,
           before_call: Callable[[], Any] | None = None) -> torch.Tensor:
    """One sampling run (DPM-Solver++ steps of the transformer), as the stock pipeline's loop; returns latents.

    `before_call()` runs before every transformer call (e.g. `torch.compiler.cudagraph_mark_step_begin`, so
    that CUDA-graph replays may reuse the previous step's output memory)."""
    before_call = before_call or _nothing
    from .inputs import FlowInputs, sample_flow

    if isinstance(inputs, FlowInputs):  # FLUX.1, SD3.5, Qwen-Image, Wan: the pipeline's own loop (inputs.py)
        return sample_flow(model, scheduler, inputs, num_steps, before_call)
    scheduler.set_timesteps(num_steps, device=inputs.latents.device)
    if isinstance(getattr(model, "_orig_mod", model), DiTTransformer2DModel):  # also a torch.compile'd model
        return _sample_dit(model, scheduler, inputs, before_call)
    cfg = inputs.guidance_scale > 1
    latents = inputs.latents
    channels = latents.shape[1]
    for t in scheduler.timesteps:  # PixArtAlphaPipeline.__call__, "7. Denoising loop"
        x = torch.cat([latents] * 2) if cfg else latents
        x = scheduler.scale_model_input(x, t)
        timestep = t[None].to(x.device).expand(x.shape[0])
        before_call()
        noise_pred = model(x, timestep=timestep, return_dict=False, **inputs.cond)[0]
        if cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + inputs.guidance_scale * (text - uncond)
        if model.config.out_channels // 2 == channels:  # learned sigma
            noise_pred = noise_pred.chunk(2, dim=1)[0]
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    return latents


def _nothing() -> None:
    return None


def _sample_dit(model: nn.Module, scheduler: Any, inputs: SamplingInputs, before_call: Callable[[], Any]) -> torch.Tensor:
    cfg = inputs.guidance_scale > 1
    channels = inputs.latents.shape[1]
    x = torch.cat([inputs.latents] * 2) if cfg else inputs.latents
    for t in scheduler.timesteps:  # DiTPipeline.__call__
        if cfg:
            half = x[: len(x) // 2]
            x = torch.cat([half, half], dim=0)
        x = scheduler.scale_model_input(x, t)
        timestep = t[None].to(x.device).expand(x.shape[0])
        before_call()
        noise_pred = model(x, timestep=timestep, **inputs.cond).sample
        if cfg:
            eps, rest = noise_pred[:, :channels], noise_pred[:, channels:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + inputs.guidance_scale * (cond_eps - uncond_eps)
            noise_pred = torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
        out = noise_pred[:, :channels] if model.config.out_channels // 2 == channels else noise_pred
        x = scheduler.step(out, t, x).prev_sample
    return x.chunk(2, dim=0)[0] if cfg else x
