"""A tiny Sana (transformer, deep-compression autoencoder, flow DPM-Solver++) built from configs, no hub."""
from __future__ import annotations

import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

CAPTION_DIM = 16
WIDTH = 16  # inner dim: 2 heads x 8
SIDE = 8  # latent side of a 32 x 32 image (SanaPipeline wants multiples of 32; the tiny autoencoder downsamples by 4)
TEXT_TOKENS = 6


def tiny_sana(num_layers: int = 8, seed: int = 0, **kw) -> SanaTransformer2DModel:
    torch.manual_seed(seed)
    cfg = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=num_layers,
               num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=WIDTH,
               caption_channels=CAPTION_DIM, sample_size=SIDE, patch_size=1)
    cfg.update(kw)
    return SanaTransformer2DModel(**cfg).eval()


def tiny_dc_vae(seed: int = 0) -> AutoencoderDC:
    """Three stages (downsampling by 4), the last with linear attention as in Sana's DC-AE."""
    torch.manual_seed(seed)
    return AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                         encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                         decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                         encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                         encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                         encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                         downsample_block_type="conv", upsample_block_type="interpolate",
                         decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407).eval()


def sana_scheduler() -> DPMSolverMultistepScheduler:
    """Sana_1600M_1024px_diffusers' scheduler/scheduler_config.json: DPM-Solver++ on flow sigmas, shift 3."""
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", beta_schedule="linear", beta_start=0.0001,
                                       beta_end=0.02, num_train_timesteps=1000, flow_shift=3.0, use_flow_sigmas=True,
                                       prediction_type="flow_prediction", solver_order=2, solver_type="midpoint",
                                       lower_order_final=True, final_sigmas_type="zero")


def sana_pipeline(num_layers: int = 8, seed: int = 0, **kw) -> SanaPipeline:
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=tiny_dc_vae(seed),
                        transformer=tiny_sana(num_layers, seed, **kw), scheduler=sana_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_embeds(batch: int = 1, seed: int = 0) -> dict:
    """Prompt embeddings and masks as SanaPipeline takes them (the last caption token padded out)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, TEXT_TOKENS, CAPTION_DIM, generator=g)
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
    mask[:, -1] = 0
    return dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None,
                negative_prompt_embeds=torch.zeros_like(emb),
                negative_prompt_attention_mask=mask.clone())


def run_sana(pipe: SanaPipeline, steps: int, seed: int = 0, guidance_scale: float = 4.5,
             output_type: str = "latent", **kw) -> torch.Tensor:
    """One pipeline call on a fixed seed (32 x 32 pixels, batched CFG); latents unless `output_type` says else."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(num_inference_steps=steps, generator=gen, guidance_scale=guidance_scale, height=32, width=32,
               output_type=output_type, use_resolution_binning=False, **sana_embeds(), **kw).images
    return out if torch.is_tensor(out) else torch.as_tensor(out)


def sana_inputs(model: SanaTransformer2DModel, batch: int = 2, dtype: torch.dtype = torch.float32,
                seed: int = 0) -> dict:
    """Direct forward inputs as SanaPipeline passes them: latents (batch, 4, 8, 8), timesteps, captions, mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, SIDE, SIDE, generator=g).to(dtype)
    pe = sana_embeds(batch, seed)
    return dict(hidden_states=x, encoder_hidden_states=pe["prompt_embeds"].to(dtype),
                encoder_attention_mask=pe["prompt_attention_mask"], timestep=torch.tensor([999.0, 500.0][:batch]))
