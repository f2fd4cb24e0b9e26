"""Tiny SD3 transformers and a stock `StableDiffusion3Pipeline` built from configs (no weights, no hub)."""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)

JOINT_DIM = 16  # text embedding width (joint_attention_dim)
POOLED_DIM = 8  # pooled text embedding width (pooled_projection_dim)
TEXT_TOKENS = 6
LATENT_CHANNELS = 16


def tiny_sd3(num_layers: int = 6, seed: int = 0, dual: tuple[int, ...] = (0, 1), **kw) -> SD3Transformer2DModel:
    """A tiny SD3.5-medium-shaped transformer: `dual` blocks with `use_dual_attention`, qk RMSNorm, the last block
    `context_pre_only` (width 16, 2 heads)."""
    torch.manual_seed(seed)
    cfg = dict(sample_size=8, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=num_layers, attention_head_dim=8,
               num_attention_heads=2, joint_attention_dim=JOINT_DIM, caption_projection_dim=16,
               pooled_projection_dim=POOLED_DIM, out_channels=LATENT_CHANNELS, pos_embed_max_size=16,
               dual_attention_layers=dual, qk_norm="rms_norm")
    cfg.update(kw)
    return SD3Transformer2DModel(**cfg).eval()


def tiny_vae16(seed: int = 0) -> AutoencoderKL:
    """A one-level AutoencoderKL with 16 latent channels (SD3's), vae_scale_factor 1."""
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, layers_per_block=1, scaling_factor=1.5305, shift_factor=0.0609).eval()


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3.5's scheduler config (shift 3.0)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def tiny_sd3_pipeline(num_layers: int = 6, seed: int = 0, **kw) -> StableDiffusion3Pipeline:
    """A stock `StableDiffusion3Pipeline` around a tiny transformer, the 16-channel tiny VAE and flow matching."""
    pipe = StableDiffusion3Pipeline(transformer=tiny_sd3(num_layers, seed, **kw), scheduler=flow_scheduler(),
                                    vae=tiny_vae16(seed), text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_prompt_embeds(batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Prompt and negative embeddings as the pipeline takes them (the text encoders are None)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, TEXT_TOKENS, JOINT_DIM, generator=g)
    pooled = torch.randn(batch, POOLED_DIM, generator=g)
    return dict(prompt_embeds=emb.to(dtype), pooled_prompt_embeds=pooled.to(dtype),
                negative_prompt_embeds=torch.zeros_like(emb, dtype=dtype),
                negative_pooled_prompt_embeds=torch.zeros_like(pooled, dtype=dtype))


def run_sd3(pipe, steps: int, seed: int = 0, guidance_scale: float = 4.5, **kw) -> torch.Tensor:
    """One pipeline call on a fixed seed at 16 x 16 latents; returns the latents."""
    gen = torch.Generator().manual_seed(seed)
    dtype = pipe.transformer.dtype
    return pipe(num_inference_steps=steps, generator=gen, guidance_scale=guidance_scale, height=16, width=16,
                output_type="latent", **sd3_prompt_embeds(dtype=dtype), **kw).images


def sd3_inputs(batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Direct forward inputs as the pipeline passes them: latents (batch, 16, 8, 8), timesteps, text, pooled."""
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, LATENT_CHANNELS, 8, 8, generator=g).to(dtype),
                timestep=torch.tensor([1000.0, 521.3][:batch]),
                encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, JOINT_DIM, generator=g).to(dtype),
                pooled_projections=torch.randn(batch, POOLED_DIM, generator=g).to(dtype))
