"""The real architectures with random weights for `ilf bench` and the GPU smoke test, and the identity block."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import get_backbone


class IdentityBlock(nn.Module):
    """A block that returns its input: with every block replaced, a sampling run times only what is not a block
    (the method's own loop, residual adds, patch embedding, head, scheduler). Keeps the block's `norm1`
    (DiT's head embeds the timestep with block 0's)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        if hasattr(block, "norm1"):
            self.norm1 = block.norm1
        ref = next(block.parameters())  # ILF places its scales on a block parameter's device
        self.anchor = nn.Parameter(torch.zeros(0, device=ref.device, dtype=ref.dtype), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


TINY_WIDTH = dict(attention_head_dim=8, num_attention_heads=3)  # `tiny`: D = 24 (PixArt's size embedder: D % 3 == 0)


def transformer_from_config(backbone: str, device: Any, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The registry backbone's transformer class built from its config (random weights, seed 0) on `device`.

    Args:
        backbone: a name of `ilf.registry.BACKBONES`.
        device: where the parameters are created.
        overrides: config fields to change (width, depth, sample size).

    Returns:
        The transformer, in eval mode, in its default dtype.
    """
    import diffusers

    spec = get_backbone(backbone)
    cfg = {**spec.transformer_config, **(overrides or {})}
    torch.manual_seed(0)
    with torch.device(device):
        return getattr(diffusers, spec.transformer_class).from_config(cfg).eval()


# `tiny` for the flow-matching families: text widths 16 (pooled 8), rope axes summing to the head dim 8, Wan's FF
TINY_FAMILY: dict[str, dict[str, Any]] = {
    "FluxTransformer2DModel": dict(joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)),
    "SD3Transformer2DModel": dict(joint_attention_dim=16, pooled_projection_dim=8, caption_projection_dim=24),
    "QwenImageTransformer2DModel": dict(joint_attention_dim=16, axes_dims_rope=(2, 2, 4)),
    "WanTransformer3DModel": dict(text_dim=16, ffn_dim=48),
}


def _in_dtype(backbone: str, device: Any, dtype: torch.dtype, overrides: dict[str, Any]) -> nn.Module:
    """The transformer created on `device` directly in `dtype` (torch's default dtype while diffusers builds it):
    no float32 copy (Qwen-Image's 20.4B parameters are 41 GiB in bf16, 82 GiB in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return transformer_from_config(backbone, device, overrides)
    finally:
        torch.set_default_dtype(previous)


def build_model(backbone: str, resolution: int, device: Any, dtype: torch.dtype, tiny: bool = False) -> nn.Module:
    """The real architecture with random weights; below its native size the positional table is made for
    `resolution` (the stock model would recompute it every step), every block is unchanged. `tiny` shrinks
    the width to 24 (a plumbing test of the benchmark, not a measurement of the architecture).

    The flow-matching families (FLUX.1, SD3.5, Qwen-Image, Wan) are created in `dtype` on the device (half
    precision: no float32 copy); PixArt and DiT in float32, then cast."""
    spec = get_backbone(backbone)
    overrides: dict[str, Any] = {}
    if tiny:
        overrides.update(TINY_WIDTH)
        if "cross_attention_dim" in spec.transformer_config:
            overrides.update(cross_attention_dim=24, caption_channels=16)
        overrides.update(TINY_FAMILY.get(spec.transformer_class, {}))
    if spec.transformer_class in TINY_FAMILY:
        if spec.transformer_class == "SD3Transformer2DModel":
            overrides["sample_size"] = resolution // 8  # only the default size of the cropped positional table
        model = _in_dtype(backbone, device, dtype, overrides) if dtype in (torch.bfloat16, torch.float16) \
            else transformer_from_config(backbone, device, overrides)
        nn.Module.to(model, dtype)
        return model.requires_grad_(False)
    if resolution != spec.resolution:
        if spec.transformer_class == "PixArtTransformer2DModel" and \
                spec.transformer_config.get("use_additional_conditions") is None:
            # keep the real model's conditioning
            overrides["use_additional_conditions"] = spec.transformer_config["sample_size"] == 128
        overrides["sample_size"] = resolution // 8
    model = transformer_from_config(backbone, device, overrides)
    nn.Module.to(model, dtype)  # every parameter in `dtype` (diffusers' `.to` only adds a keep-in-fp32 warning)
    return model.requires_grad_(False)
