"""FLOPs of one transformer-block forward, computed from the model config (for achieved TFLOP/s in `ilf bench`).

Per sequence of the batch (the classifier-free-guidance batch counts twice), with N image tokens
(`(resolution / 8 / patch_size)^2`), D = heads x head_dim, L caption tokens, D_c the caption width
seen by cross-attention (`cross_attention_dim`, = D for PixArt after its caption projection) and
F the MLP width (`4 D`, diffusers' `FeedForward(mult=4)`), the multiply-accumulates (MACs) are

    self-attention projections   Q, K, V, out:  4 N D^2
    self-attention scores+values QK^T, AV:      2 N^2 D
    cross-attention projections  Q, out:        2 N D^2      (PixArt only: the caption tokens)
                                 K, V:          2 L D_c D
    cross-attention scores+values               2 N L D
    MLP                          in, out:       2 N D F      (`gelu-approximate`; `geglu` doubles the in-projection)

and FLOPs = 2 x MACs (`torch.utils.flop_counter` counts the same way; a test checks this formula
against `FlopCounterMode` on a tiny block). **Excluded** (O(N D) or per-sequence, < 0.5% at the
paper's sizes): layer norms, softmax, GELU, biases, residual adds, the adaLN modulation
(`scale_shift_table`), and DiT's per-block `AdaLayerNormZero` embedding (timestep + class embedder and
its D -> 6D linear, ~7 D^2 MACs per sequence); outside the blocks: patch embedding, PixArt's caption
projection and adaLN-single, the output head, the scheduler, the cache's residual adds and ILF's
`g + s f`. So FLOPs per row = block forwards x FLOPs per block forward (the feedback block is a
block of the same shape).
"""
from __future__ import annotations

from typing import Any, Mapping


def block_flops_breakdown(config: Mapping[str, Any], resolution: int, text_tokens: int = 0,
                          sequences: int = 1) -> dict[str, int]:
    """FLOPs of one block forward by part, for `sequences` sequences at `resolution` px (see module doc).

    `config` is the transformer's config (`model.config` or the registry's dict); cross-attention terms
    appear only when the block has it (`cross_attention_dim` set, i.e. PixArt). Raises ValueError for an
    activation whose MLP shape is unknown.
    """
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    side = resolution // 8 // int(config["patch_size"])  # VAE factor 8, then patches
    n = side * side
    act = config.get("activation_fn", "geglu")
    if act not in ("gelu-approximate", "gelu", "geglu", "geglu-approximate"):
        raise ValueError(f"activation_fn={act!r}: MLP FLOPs are known for gelu[-approximate] and geglu only")
    f = 4 * d
    mlp_in = 2 * f if act.startswith("geglu") else f  # GEGLU projects to 2F, then gates
    macs = {
        "self_attn_proj": 4 * n * d * d,
        "self_attn_sdpa": 2 * n * n * d,
        "mlp": n * d * mlp_in + n * f * d,
    }
    dc = config.get("cross_attention_dim")
    if dc and text_tokens:
        macs["cross_attn_proj"] = 2 * n * d * d + 2 * text_tokens * int(dc) * d
        macs["cross_attn_sdpa"] = 2 * n * text_tokens * d
    return {k: 2 * v * sequences for k, v in macs.items()}


def block_flops(config: Mapping[str, Any], resolution: int, text_tokens: int = 0, sequences: int = 1) -> int:
    """FLOPs of one block forward (sum of `block_flops_breakdown`), e.g. PixArt-alpha at 1024 px, 120 caption
    tokens, CFG batch 2: 4.65e11; DiT-XL/2 at 256 px, CFG batch 2: 1.69e10."""
    return sum(block_flops_breakdown(config, resolution, text_tokens, sequences).values())
