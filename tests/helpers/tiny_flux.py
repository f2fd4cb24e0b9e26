"""Tiny FLUX.1 models and a stock `FluxPipeline` built from configs (no weights, no hub) for the tests."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

TEXT_DIM = 16  # joint_attention_dim (T5's 4096 in FLUX.1)
POOLED_DIM = 8  # pooled_projection_dim (CLIP's 768 in FLUX.1)
TEXT_TOKENS = 6
# FLUX.1-dev's scheduler/scheduler_config.json (FLUX.1-schnell: shift 1.0, use_dynamic_shifting false)
DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                     base_image_seq_len=256, max_image_seq_len=4096)
SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def tiny_flux(num_layers: int = 2, num_single_layers: int = 3, guidance_embeds: bool = True, seed: int = 0,
              **kw) -> FluxTransformer2DModel:
    """A FluxTransformer2DModel of width 16 (2 heads of 8, rope axes 2+2+4) over 64 packed latent channels."""
    torch.manual_seed(seed)
    cfg = dict(patch_size=1, in_channels=64, num_layers=num_layers, num_single_layers=num_single_layers,
               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
               pooled_projection_dim=POOLED_DIM, guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))
    cfg.update(kw)
    return FluxTransformer2DModel(**cfg).eval()


def tiny_flux_vae(seed: int = 0) -> AutoencoderKL:
    """A one-level AutoencoderKL with FLUX's 16 latent channels and its scaling/shift factors."""
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=16,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, layers_per_block=1, scaling_factor=0.3611, shift_factor=0.1159).eval()


def tiny_flux_pipeline(num_layers: int = 2, num_single_layers: int = 3, guidance_embeds: bool = True,
                       seed: int = 0) -> FluxPipeline:
    """A stock FluxPipeline (no text encoders) with FLUX.1-dev's scheduler config (schnell's without guidance)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**(DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER))
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_flux_vae(seed), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None,
                        transformer=tiny_flux(num_layers, num_single_layers, guidance_embeds, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_prompt_embeds(batch: int = 1, seed: int = 0, negative: bool = False) -> dict:
    """`prompt_embeds` (B, 6, 16) and `pooled_prompt_embeds` (B, 8), and negative ones for `true_cfg_scale`."""
    g = torch.Generator().manual_seed(seed)
    out = dict(prompt_embeds=torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g),
               pooled_prompt_embeds=torch.randn(batch, POOLED_DIM, generator=g))
    if negative:
        out.update(negative_prompt_embeds=torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g),
                   negative_pooled_prompt_embeds=torch.randn(batch, POOLED_DIM, generator=g))
    return out


def run_flux(pipe: FluxPipeline, steps: int, seed: int = 0, size: int = 16, true_cfg_scale: float = 1.0,
             guidance_scale: float = 3.5, output_type: str = "latent") -> torch.Tensor:
    """One pipeline call on a fixed seed at size x size pixels (packed latents (1, size*size/4, 64) by default)."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(num_inference_steps=steps, generator=gen, height=size, width=size, guidance_scale=guidance_scale,
               true_cfg_scale=true_cfg_scale, output_type=output_type,
               **flux_prompt_embeds(negative=true_cfg_scale > 1)).images
    return torch.as_tensor(out)


def flux_inputs(model: FluxTransformer2DModel, batch: int = 2, tokens: int = 16, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> dict:
    """Direct forward inputs as FluxPipeline passes them: packed latents, t/1000, guidance, ids (2-d)."""
    g = torch.Generator().manual_seed(seed)
    side = int(tokens ** 0.5)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    emb = flux_prompt_embeds(batch, seed)
    inputs = dict(hidden_states=torch.randn(batch, tokens, model.config.in_channels, generator=g).to(dtype),
                  encoder_hidden_states=emb["prompt_embeds"].to(dtype),
                  pooled_projections=emb["pooled_prompt_embeds"].to(dtype),
                  timestep=torch.tensor([0.9, 0.35][:batch]).to(dtype), img_ids=img_ids.reshape(-1, 3).to(dtype),
                  txt_ids=torch.zeros(TEXT_TOKENS, 3, dtype=dtype), return_dict=False)
    if model.config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs
