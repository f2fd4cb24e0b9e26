"""Tiny models and stock pipelines built from configs (no weights, no hub) for the tests."""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                       PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel)

CAPTION_DIM = 16


def tiny_pixart(num_layers: int = 28, seed: int = 0, **kw) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    cfg = dict(num_layers=num_layers, attention_head_dim=8, num_attention_heads=2, in_channels=4, out_channels=8,
               sample_size=8, patch_size=2, caption_channels=CAPTION_DIM, cross_attention_dim=16,
               norm_type="ada_norm_single", use_additional_conditions=False)
    cfg.update(kw)
    return PixArtTransformer2DModel(**cfg).eval()


def tiny_dit(num_layers: int = 28, seed: int = 0, **kw) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    cfg = dict(num_layers=num_layers, attention_head_dim=8, num_attention_heads=2, in_channels=4, out_channels=8,
               sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
    cfg.update(kw)
    return DiTTransformer2DModel(**cfg).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, layers_per_block=1).eval()


def dpm() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", beta_schedule="linear", beta_start=0.0001,
                                       beta_end=0.02, num_train_timesteps=1000)


def tiny_pipeline(kind: str, num_layers: int = 28, seed: int = 0):
    """A stock PixArtAlpha/PixArtSigma/DiT pipeline around a tiny transformer, a tiny VAE and DPM-Solver++."""
    if kind == "dit":
        pipe = DiTPipeline(transformer=tiny_dit(num_layers, seed), vae=tiny_vae(seed), scheduler=dpm())
    else:
        cls = PixArtAlphaPipeline if kind == "pixart-alpha" else PixArtSigmaPipeline
        pipe = cls(tokenizer=None, text_encoder=None, vae=tiny_vae(seed), transformer=tiny_pixart(num_layers, seed),
                   scheduler=dpm())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(batch: int = 1, seq: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, seq, CAPTION_DIM, generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    return dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None, negative_prompt_embeds=torch.zeros_like(emb),
                negative_prompt_attention_mask=mask.clone())


def run_pipeline(pipe, steps: int, seed: int = 0, guidance_scale: float = 4.5):
    """One pipeline call on a fixed seed; returns latents (output_type='latent' where supported)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(pipe, DiTPipeline):
        return pipe(class_labels=[3], num_inference_steps=steps, generator=gen, guidance_scale=guidance_scale,
                    output_type="np").images
    return pipe(num_inference_steps=steps, generator=gen, guidance_scale=guidance_scale, height=16, width=16,
                output_type="latent", use_resolution_binning=False, **prompt_embeds()).images


def model_inputs(model, batch: int = 2, seed: int = 0) -> dict:
    """Direct forward inputs for a tiny PixArt or DiT transformer: latents (batch, 4, 8, 8), timesteps, condition."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500][:batch])
    if isinstance(model, type(tiny_dit(1))):
        return dict(hidden_states=x, timestep=t, class_labels=torch.tensor([1, 1000][:batch]))
    pe = prompt_embeds(batch)
    return dict(hidden_states=x, timestep=t, encoder_hidden_states=pe["prompt_embeds"],
                encoder_attention_mask=pe["prompt_attention_mask"])
