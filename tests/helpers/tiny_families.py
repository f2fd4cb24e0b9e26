"""Tiny FLUX, SD3, QwenImage, Wan and Sana transformers from the real diffusers classes (no weights, no hub),
with direct forward inputs: `(model, kwargs)` for a batch of `batch` sequences."""
from __future__ import annotations

import torch
import diffusers

TEXT_TOKENS = 5


def tiny_flux(batch: int = 2, num_layers: int = 2, num_single_layers: int = 3, guidance: bool = True):
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10, guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4)).eval()
    n = 16  # a 4 x 4 packed latent (64 px)
    kw = dict(hidden_states=torch.randn(batch, n, 8), encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 12),
              pooled_projections=torch.randn(batch, 10), timestep=torch.full((batch,), 0.5),
              img_ids=torch.zeros(n, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3))
    if guidance:
        kw["guidance"] = torch.full((batch,), 3.5)
    return model, kw


def tiny_sd3(batch: int = 2, num_layers: int = 3, dual_attention_layers: tuple[int, ...] = (0,)):
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=num_layers, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
        pos_embed_max_size=8, dual_attention_layers=dual_attention_layers,
        qk_norm="rms_norm" if dual_attention_layers else None).eval()
    return model, dict(hidden_states=torch.randn(batch, 4, 8, 8),
                       encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 12),
                       pooled_projections=torch.randn(batch, 10), timestep=torch.full((batch,), 500.0))


def tiny_qwenimage(batch: int = 2, num_layers: int = 2):
    torch.manual_seed(0)
    model = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=(2, 2, 4)).eval()
    return model, dict(hidden_states=torch.randn(batch, 16, 16),
                       encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 12),
                       encoder_hidden_states_mask=torch.ones(batch, TEXT_TOKENS), timestep=torch.full((batch,), 0.5),
                       img_shapes=[(1, 4, 4)] * batch)


def tiny_wan(batch: int = 2, num_layers: int = 2):
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=12,
        freq_dim=8, ffn_dim=20, num_layers=num_layers, rope_max_seq_len=32).eval()
    return model, dict(hidden_states=torch.randn(batch, 4, 2, 8, 8),
                       encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 12), timestep=torch.full((batch,), 500))


def tiny_sana(batch: int = 2, num_layers: int = 2):
    torch.manual_seed(0)
    model = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=num_layers,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=12,
        mlp_ratio=2.5, sample_size=8, patch_size=1).eval()
    return model, dict(hidden_states=torch.randn(batch, 4, 8, 8),
                       encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 12), timestep=torch.full((batch,), 500))
