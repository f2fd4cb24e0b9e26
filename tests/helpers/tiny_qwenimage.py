"""A tiny Qwen-Image (dual-stream transformer, its VAE, flow-matching Euler) built from configs, no hub."""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                       QwenImageTransformer2DModel)

TEXT_DIM = 16  # joint_attention_dim: the text encoder's hidden size (Qwen2.5-VL: 3584)
WIDTH = 16  # inner dim: 2 heads x 8
LATENT_CHANNELS = 4  # z_dim; the transformer sees 2 x 2 patches of them: 16 channels
SIDE = 32  # image side in pixels: latents 8 x 8, packed to 4 x 4 = 16 image tokens
TEXT_TOKENS = 6


def tiny_qwenimage(num_layers: int = 8, seed: int = 0, **kw) -> QwenImageTransformer2DModel:
    torch.manual_seed(seed)
    cfg = dict(patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=num_layers,
               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM, axes_dims_rope=(2, 2, 4))
    cfg.update(kw)
    return QwenImageTransformer2DModel(**cfg).eval()


def tiny_qwen_vae(seed: int = 0, latents_mean: list[float] | None = None,
                  latents_std: list[float] | None = None) -> AutoencoderKLQwenImage:
    """Downsamples by 4 (two stages), one frame; latent statistics 0 / 1 unless given."""
    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1,
                                  temperal_downsample=[False, True],
                                  latents_mean=latents_mean or [0.0] * LATENT_CHANNELS,
                                  latents_std=latents_std or [1.0] * LATENT_CHANNELS).eval()


def qwen_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Qwen/Qwen-Image's scheduler/scheduler_config.json: Euler on flow sigmas with exponential dynamic shift."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                                           max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")


def qwen_pipeline(num_layers: int = 8, seed: int = 0, **kw) -> QwenImagePipeline:
    pipe = QwenImagePipeline(scheduler=qwen_scheduler(), vae=tiny_qwen_vae(seed), text_encoder=None, tokenizer=None,
                             transformer=tiny_qwenimage(num_layers, seed, **kw))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def qwen_embeds(batch: int = 1, seed: int = 0) -> dict:
    """Prompt and negative-prompt embeddings with masks, as QwenImagePipeline takes them (last token padding)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g)
    neg = torch.randn(batch, TEXT_TOKENS - 2, TEXT_DIM, generator=g)  # another length: the two calls differ in shape
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
    mask[:, -1] = 0
    return dict(prompt_embeds=emb, prompt_embeds_mask=mask, negative_prompt_embeds=neg,
                negative_prompt_embeds_mask=torch.ones(batch, TEXT_TOKENS - 2, dtype=torch.long))


def run_qwen(pipe: QwenImagePipeline, steps: int, seed: int = 0, true_cfg_scale: float = 4.0,
             output_type: str = "latent", **kw) -> torch.Tensor:
    """One pipeline call on a fixed seed (32 x 32 pixels, true CFG as two calls per step unless
    `true_cfg_scale` <= 1); packed latents unless `output_type` says else."""
    gen = torch.Generator().manual_seed(seed)
    dtype = pipe.transformer.dtype  # the pipeline's latents take the embeddings' dtype
    embeds = {k: v.to(dtype) if v.is_floating_point() else v for k, v in qwen_embeds().items()}
    if true_cfg_scale <= 1:
        embeds = {k: v for k, v in embeds.items() if not k.startswith("negative")}
    out = pipe(num_inference_steps=steps, generator=gen, true_cfg_scale=true_cfg_scale, height=SIDE, width=SIDE,
               output_type=output_type, **embeds, **kw).images
    return out if torch.is_tensor(out) else torch.as_tensor(out)


def qwen_inputs(model: QwenImageTransformer2DModel, batch: int = 2, dtype: torch.dtype = torch.float32,
                seed: int = 0) -> dict:
    """Direct forward inputs as QwenImagePipeline passes them: packed latents (batch, 16, 16), t / 1000, text."""
    g = torch.Generator().manual_seed(seed)
    side = SIDE // 8
    x = torch.randn(batch, side * side, 4 * LATENT_CHANNELS, generator=g).to(dtype)
    pe = qwen_embeds(batch, seed)
    return dict(hidden_states=x, encoder_hidden_states=pe["prompt_embeds"].to(dtype),
                encoder_hidden_states_mask=pe["prompt_embeds_mask"], timestep=torch.tensor([0.999, 0.5][:batch]).to(dtype),
                img_shapes=[[(1, side, side)]] * batch, attention_kwargs={})
