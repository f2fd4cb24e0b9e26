"""Analytic forward FLOPs per block call and per image (METHOD.md "Block-forward accounting", FLOPs).

Block forwards are the paper's unit of cost (Sec. 4.2); block kinds differ in cost (FLUX's double- vs
single-stream blocks, SD3.5-medium's dual-attention blocks), so a row's cost is also given in FLOPs.

Convention: one multiply-add = 2 FLOPs; counted per sequence (one image; a classifier-free-guidance batch
does not double it, as for block forwards); every matrix product of the forward is counted, and only those:

    linear layer, T tokens, d_in -> d_out     2 T d_in d_out            (a 1x1 / patch convolution alike)
    attention, Nq queries, Nk keys, width W   4 Nq Nk W                 (Q K^T and A V; W = heads x head_dim)
    linear attention (Sana), N tokens         4 N W (d + 1)             (V K^T and (V K^T) Q per head, d = head_dim)
    depthwise k x k convolution, C channels   2 N C k^2

This is what `torch.utils.flop_counter.FlopCounterMode` counts (matmul, addmm, bmm, convolution, attention),
and the tests check every formula below against it exactly. Not counted (elementwise, O(N D) per block and
below 1% at the models' sizes): norms, softmax, activations, RoPE, adaLN modulation arithmetic, residual
adds, ILF's `g + s f`, the scheduler.

Per block, with N image tokens, L text tokens, D = heads x head_dim (per sequence):

    PixArt `BasicTransformerBlock`      self-attn 8 N D^2 + 4 N^2 D; cross-attn 4 N D^2 + 4 L D_c D + 4 N L D;
                                        FF 4 N D F (GEGLU: 6 N D F), F = 4 D
    DiT `BasicTransformerBlock`         self-attn + FF as PixArt; its `AdaLayerNormZero` embedder
                                        2 (256 D + D^2) + 12 D^2 (timestep MLP, D -> 6D modulation)
    FLUX `FluxTransformerBlock`         2 x 12 D^2 (AdaLN, both streams); joint attention 8 (N + L) D^2
                                        + 4 (N + L)^2 D; FFs 16 (N + L) D^2 (mlp ratio 4)
    FLUX `FluxSingleTransformerBlock`   T = N + L: 6 D^2 (AdaLN); Q, K, V 6 T D^2; attention 4 T^2 D;
                                        MLP in 2 T D M; fused out 2 T (D + M) D, M = mlp_ratio D
    SD3 `JointTransformerBlock`         as FLUX's double block; `context_pre_only` (last block): context
                                        AdaLN 4 D^2, no context output projection, no context FF;
                                        `use_dual_attention`: AdaLN 18 D^2 and a second self-attention
                                        over the image tokens 8 N D^2 + 4 N^2 D
    QwenImage `QwenImageTransformerBlock`  as FLUX's double block
    Wan `WanTransformerBlock`           self-attn 8 N D^2 + 4 N^2 D; cross-attn 4 N D^2 + 4 L D^2 + 4 N L D;
                                        FF 4 N D F (F = `ffn_dim`)
    Sana `SanaTransformerBlock`         linear self-attn 8 N D^2 + 4 N D (d + 1); cross-attn (width W_c)
                                        4 N D W_c + 4 L D_c W_c + 4 N L W_c; GLUMBConv 6 N D H + 36 N H, H = mlp_ratio D

Per model call, outside the blocks: the patch / token embedding 2 N C_in p^2 D, the caption projection,
the timestep (and guidance, pooled-text, size) embedders (2 (256 D + D^2) each), the head's modulation and
its output projection 2 N D p^2 C_out (see `_non_block`). A feedback step of ILF also computes cond(t_post)
once more (`ModelFlops.condition`, O(D^2) per sequence) unless t_post = t.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .config import CacheConfig, FeedbackConfig, cached_block_indices
from .errors import ILFConfigError
from .schedule import resolve_feedback_steps

DYNAMIC = "dynamic"
# diffusers class -> its block lists in the order the forward runs them (the architecture's block sequence)
BLOCK_LISTS: dict[str, tuple[tuple[str, str], ...]] = {
    "PixArtTransformer2DModel": (("transformer_blocks", "num_layers"),),
    "DiTTransformer2DModel": (("transformer_blocks", "num_layers"),),
    "FluxTransformer2DModel": (("transformer_blocks", "num_layers"),
                               ("single_transformer_blocks", "num_single_layers")),
    "SD3Transformer2DModel": (("transformer_blocks", "num_layers"),),
    "QwenImageTransformer2DModel": (("transformer_blocks", "num_layers"),),
    "WanTransformer3DModel": (("blocks", "num_layers"),),
    "SanaTransformer2DModel": (("transformer_blocks", "num_layers"),),
}
# latent pixels per token side: the VAE's factor x the patch (FLUX / QwenImage pack 2 x 2 latents per token)
_VAE_FACTOR = {"SanaTransformer2DModel": 32}
_PACKED = ("FluxTransformer2DModel", "QwenImageTransformer2DModel")


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention(queries: int, keys: int, width: int) -> int:
    return 4 * queries * keys * width


def _timestep_mlp(d_in: int, d: int) -> int:
    """diffusers' `TimestepEmbedding` (and `PixArtAlphaTextProjection`) on one vector: d_in -> d -> d."""
    return _linear(1, d_in, d) + _linear(1, d, d)


def _ff(tokens: int, d: int, inner: int, activation: str) -> int:
    """diffusers' `FeedForward`: in-projection (GEGLU: to 2 x inner, then gated), out-projection."""
    if activation not in ("gelu", "gelu-approximate", "geglu", "geglu-approximate"):
        raise ILFConfigError("activation_fn", activation, "gelu, gelu-approximate, geglu or geglu-approximate")
    return _linear(tokens, d, inner * (2 if activation.startswith("geglu") else 1)) + _linear(tokens, inner, d)


def _config(model_or_config: Any, model_class: str | None) -> tuple[dict[str, Any], str]:
    """(config dict, diffusers class name) of a model, its `config`, or a dict (`_class_name` or `model_class`)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if not isinstance(cfg, Mapping):
        raise ILFConfigError("model_or_config", type(model_or_config).__name__, "a diffusers transformer or its config")
    cls = model_class or (type(model_or_config).__name__ if hasattr(model_or_config, "config") else None) \
        or cfg.get("_class_name")
    if cls not in BLOCK_LISTS:
        raise ILFConfigError("model_class", cls, sorted(BLOCK_LISTS))
    return dict(cfg), cls


def _width(cfg: Mapping[str, Any]) -> int:
    return int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])


def _joint_block(d: int, n: int, l: int, *, context_pre_only: bool = False, dual: bool = False) -> dict[str, int]:
    """FLUX / SD3 / QwenImage double-stream block: both streams' AdaLN, joint attention, both FFs."""
    parts = {
        "adaln": _linear(1, d, (9 if dual else 6) * d) + _linear(1, d, (2 if context_pre_only else 6) * d),
        "attn_proj": 4 * _linear(n, d, d) + (3 if context_pre_only else 4) * _linear(l, d, d),
        "attn_sdpa": _attention(n + l, n + l, d),
        "ff": _ff(n, d, 4 * d, "gelu-approximate") + (0 if context_pre_only else _ff(l, d, 4 * d, "gelu-approximate")),
    }
    if dual:
        parts["attn2"] = 4 * _linear(n, d, d) + _attention(n, n, d)
    return parts


def _block(cfg: Mapping[str, Any], cls: str, list_name: str, index: int, n: int, l: int) -> dict[str, int]:
    """FLOPs by part of block `index` of `list_name` (see the module docstring)."""
    d = _width(cfg)
    if cls in ("PixArtTransformer2DModel", "DiTTransformer2DModel"):
        parts = {"attn1": 4 * _linear(n, d, d) + _attention(n, n, d),
                 "ff": _ff(n, d, 4 * d, cfg.get("activation_fn") or "gelu-approximate")}
        if cls == "DiTTransformer2DModel":  # AdaLayerNormZero embeds timestep + class itself, then D -> 6D
            parts["norm1"] = _timestep_mlp(256, d) + _linear(1, d, 6 * d)
        elif cfg.get("cross_attention_dim"):
            dc = int(cfg["cross_attention_dim"])
            parts["attn2"] = 2 * _linear(n, d, d) + 2 * _linear(l, dc, d) + _attention(n, l, d)
        return parts
    if cls == "FluxTransformer2DModel" and list_name == "single_transformer_blocks":
        t, m = n + l, int(d * 4.0)
        return {"adaln": _linear(1, d, 3 * d), "attn_proj": 3 * _linear(t, d, d), "attn_sdpa": _attention(t, t, d),
                "mlp": _linear(t, d, m) + _linear(t, d + m, d)}
    if cls == "SD3Transformer2DModel":
        return _joint_block(d, n, l, context_pre_only=index == int(cfg["num_layers"]) - 1,
                            dual=index in tuple(cfg.get("dual_attention_layers") or ()))
    if cls in ("FluxTransformer2DModel", "QwenImageTransformer2DModel"):
        return _joint_block(d, n, l)
    if cls == "WanTransformer3DModel":
        return {"attn1": 4 * _linear(n, d, d) + _attention(n, n, d),
                "attn2": 2 * _linear(n, d, d) + 2 * _linear(l, d, d) + _attention(n, l, d),
                "ff": _ff(n, d, int(cfg["ffn_dim"]), "gelu-approximate")}
    # Sana: linear self-attention (ReLU kernel, values padded by a row of ones), cross-attention, GLUMBConv
    head = int(cfg["attention_head_dim"])
    wc = int(cfg["num_cross_attention_heads"]) * int(cfg["cross_attention_head_dim"])
    hidden = int(float(cfg.get("mlp_ratio", 2.5)) * d)
    return {"attn1": 4 * _linear(n, d, d) + 4 * n * d * (head + 1),
            "attn2": _linear(n, d, wc) + 2 * _linear(l, int(cfg["cross_attention_dim"]), wc) + _attention(n, l, wc)
            + _linear(n, wc, d),
            "ff": _linear(n, d, 2 * hidden) + 2 * n * 2 * hidden * 9 + _linear(n, hidden, d)}


def _non_block(cfg: Mapping[str, Any], cls: str, n: int, l: int) -> tuple[int, int, int]:
    """(embed, condition, head) FLOPs of one model call outside the blocks; `condition` is the part of
    `embed` that depends on the timestep (what ILF computes again at t_post)."""
    d = _width(cfg)
    c_in, c_out = int(cfg.get("in_channels") or 0), int(cfg.get("out_channels") or cfg.get("in_channels") or 0)
    patch = cfg.get("patch_size") or 1
    area = math.prod(patch) if isinstance(patch, (list, tuple)) else int(patch) ** 2
    time = _timestep_mlp(256, d)
    if cls == "PixArtTransformer2DModel":
        cond = time + _linear(1, d, 6 * d)
        if cfg.get("use_additional_conditions", cfg.get("sample_size") == 128):
            cond += 3 * _timestep_mlp(256, d // 3)  # resolution (height, width) and aspect ratio
        caption = _linear(l, int(cfg["caption_channels"]), d) + _linear(l, d, d) if l else 0
        return _linear(n, c_in * area, d) + caption + cond, cond, _linear(n, d, area * c_out)
    if cls == "DiTTransformer2DModel":  # the head embeds timestep + class with block 0's embedder
        return _linear(n, c_in * area, d), 0, time + _linear(1, d, 2 * d) + _linear(n, d, area * c_out)
    if cls == "SanaTransformer2DModel":
        if cfg.get("guidance_embeds"):
            raise ILFConfigError("guidance_embeds", True, "False (Sana's guidance embedder is not counted)")
        cond = time + _linear(1, d, 6 * d)
        caption = _linear(l, int(cfg["caption_channels"]), d) + _linear(l, d, d)
        return _linear(n, c_in * area, d) + caption + cond, cond, _linear(n, d, area * c_out)
    if cls == "WanTransformer3DModel":
        if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
            raise ILFConfigError("image_dim", cfg.get("image_dim"),
                                 "None (Wan's image-to-video blocks are not counted)")
        cond = _timestep_mlp(int(cfg["freq_dim"]), d) + _linear(1, d, 6 * d)
        text = _linear(l, int(cfg["text_dim"]), d) + _linear(l, d, d)
        return _linear(n, c_in * area, d) + text + cond, cond, _linear(n, d, area * c_out)
    if cls == "QwenImageTransformer2DModel":
        if cfg.get("zero_cond_t") or cfg.get("guidance_embeds"):
            raise ILFConfigError("zero_cond_t", True, "False (not counted)")
        embed = _linear(n, c_in, d) + _linear(l, int(cfg["joint_attention_dim"]), d) + time
        return embed, time, _linear(1, d, 2 * d) + _linear(n, d, area * c_out)
    # FLUX / SD3: timestep (+ guidance) + pooled-text embedders, the context embedder, the image embedding
    cond = time + _timestep_mlp(int(cfg["pooled_projection_dim"]), d)
    if cfg.get("guidance_embeds"):
        cond += time
    if cls == "FluxTransformer2DModel":
        image, c_out = _linear(n, c_in, d), area * c_out
    else:
        image, c_out = _linear(n, c_in * area, d), area * c_out
    context = _linear(l, int(cfg["joint_attention_dim"]), int(cfg.get("caption_projection_dim") or d))
    return image + context + cond, cond, _linear(1, d, 2 * d) + _linear(n, d, c_out)


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs of one model call, per sequence, by block and outside the blocks (module docstring).

    Args:
        model_class (`str`): the diffusers class.
        image_tokens (`int`): N, image tokens per sequence.
        text_tokens (`int`): L, text tokens per sequence (0 for class-conditional DiT).
        block_names (`tuple[str, ...]`): every block of the architecture's sequence, `"<list>.<i>"` in run order.
        blocks (`tuple[int, ...]`): FLOPs of one forward of each of those blocks.
        embed (`int`): patch / caption / timestep embeddings per model call.
        condition (`int`): the timestep-dependent part of `embed` (ILF computes it again at t_post).
        head (`int`): the output head per model call.
    """

    model_class: str
    image_tokens: int
    text_tokens: int
    block_names: tuple[str, ...]
    blocks: tuple[int, ...]
    embed: int
    condition: int
    head: int

    @property
    def non_block(self) -> int:
        """FLOPs outside the blocks per model call (embeddings + head)."""
        return self.embed + self.head

    @property
    def per_call(self) -> int:
        """FLOPs of one plain model call: every block once plus the non-block parts."""
        return sum(self.blocks) + self.non_block

    def block(self, name_or_index: str | int) -> int:
        """FLOPs of one forward of a block, by its index in the block sequence or its module name."""
        if isinstance(name_or_index, int):
            return self.blocks[name_or_index]
        if name_or_index not in self.block_names:
            raise ILFConfigError("block", name_or_index, f"one of {self.block_names[0]} .. {self.block_names[-1]}")
        return self.blocks[self.block_names.index(name_or_index)]

    def from_counts(self, per_block: Mapping[str, int], model_calls: int,
                    feedback: FeedbackConfig | None = None) -> int:
        """FLOPs per image from counted calls: `per_block` by module name (`BlockForwardCounter.per_block`) and
        the model calls; ILF's `"ilf_feedback"` costs what B_e costs (e = `feedback.loop_end`), plus one
        cond(t_post) where t_post is not t (`feedback.t_post != "default"`; calls within a sampling run)."""
        total = model_calls * self.non_block
        for name, calls in per_block.items():
            if name == "ilf_feedback":
                if feedback is None:
                    raise ILFConfigError("feedback", None, "the FeedbackConfig (ILF's feedback block copies B_e)")
                total += calls * (self.blocks[feedback.loop_end] + _t_post_condition(feedback, self))
            else:
                total += calls * self.block(name)
        return total


def _t_post_condition(config: FeedbackConfig, flops: ModelFlops) -> int:
    """cond(t_post) once more on a feedback step, unless t_post = t (`t_post="default"`)."""
    return 0 if config.t_post == "default" else flops.condition


def model_flops(model_or_config: Any, image_tokens: int, text_tokens: int = 0,
                model_class: str | None = None) -> ModelFlops:
    """FLOPs of one model call per sequence, block by block (formulas in the module docstring).

    Args:
        model_or_config: a diffusers transformer (any device, `meta` too), its `config`, or a config dict.
        image_tokens: N, image tokens per sequence (`image_tokens(...)` from the resolution).
        text_tokens: L, text (caption) tokens per sequence as the pipeline passes them (padded length).
        model_class: the diffusers class name, where `model_or_config` is a dict without `_class_name`.

    Returns:
        The `ModelFlops`.

    Raises:
        ILFConfigError: an unknown class, or a configuration whose extra parts are not counted.

    Example:
        ```py
        from ilf.flops import image_tokens, model_flops
        from ilf.registry import get_backbone

        spec = get_backbone("pixart-alpha-512")
        mf = model_flops(spec.transformer_config, image_tokens(spec.transformer_config, 512,
                         model_class=spec.transformer_class), 120, model_class=spec.transformer_class)
        mf.blocks[0]  # FLOPs of one block forward, one image
        ```
    """
    cfg, cls = _config(model_or_config, model_class)
    n, l = int(image_tokens), int(text_tokens)
    if n < 1 or l < 0:
        raise ILFConfigError("image_tokens, text_tokens", (image_tokens, text_tokens), "N >= 1 and L >= 0")
    if cls == "DiTTransformer2DModel":
        l = 0
    names, blocks = [], []
    for list_name, key in BLOCK_LISTS[cls]:
        for i in range(int(cfg.get(key) or 0)):
            names.append(f"{list_name}.{i}")
            blocks.append(sum(_block(cfg, cls, list_name, i, n, l).values()))
    embed, condition, head = _non_block(cfg, cls, n, l)
    return ModelFlops(cls, n, l, tuple(names), tuple(blocks), embed, condition, head)


def block_flops_breakdown(model_or_config: Any, block_index: int, image_tokens: int, text_tokens: int = 0,
                          model_class: str | None = None) -> dict[str, int]:
    """FLOPs of one forward of block `block_index` (of the whole block sequence) by part, per sequence.

    Args:
        model_or_config, image_tokens, text_tokens, model_class: as for `model_flops`.
        block_index: the block's index in the architecture's sequence (FLUX: double-stream blocks, then
            single-stream blocks).

    Returns:
        `{part: FLOPs}` (e.g. `attn1`, `attn2`, `ff`; FLUX/SD3: `adaln`, `attn_proj`, `attn_sdpa`, `ff` / `mlp`).
    """
    cfg, cls = _config(model_or_config, model_class)
    for list_name, key in BLOCK_LISTS[cls]:
        count = int(cfg.get(key) or 0)
        if 0 <= block_index < count:
            return _block(cfg, cls, list_name, block_index, int(image_tokens),
                          0 if cls == "DiTTransformer2DModel" else int(text_tokens))
        block_index -= count
    raise ILFConfigError("block_index", block_index, "an index into the architecture's block sequence")


def block_flops(model_or_config: Any, block_index: int, image_tokens: int, text_tokens: int = 0,
                model_class: str | None = None) -> int:
    """FLOPs of one forward of block `block_index`, per sequence (sum of `block_flops_breakdown`).

    Example:
        ```py
        block_flops(flux.transformer, 0, 4096, 512)   # a FLUX.1-dev double-stream block at 1024 px
        block_flops(flux.transformer, 19, 4096, 512)  # the first single-stream block
        ```
    """
    return sum(block_flops_breakdown(model_or_config, block_index, image_tokens, text_tokens, model_class).values())


def image_tokens(model_or_config: Any, height: int, width: int | None = None, num_frames: int = 1,
                 model_class: str | None = None) -> int:
    """Image tokens N of one sequence at `height` x `width` px (VAE factor 8, Sana 32; then the patch; FLUX
    and QwenImage pack 2 x 2 latents; Wan: (num_frames - 1) / 4 + 1 latent frames)."""
    cfg, cls = _config(model_or_config, model_class)
    width = height if width is None else width
    patch = cfg.get("patch_size") or 1
    pt, ph, pw = tuple(patch) if isinstance(patch, (list, tuple)) else (1, int(patch), int(patch))
    if cls in _PACKED:
        ph = pw = 2
    factor = _VAE_FACTOR.get(cls, 8)
    frames = (num_frames - 1) // 4 + 1 if cls == "WanTransformer3DModel" else 1
    return (frames // pt) * (height // factor // ph) * (width // factor // pw)


def expected_flops(config: FeedbackConfig | CacheConfig | None, flops: ModelFlops, num_steps: int,
                   calls_per_step: int = 1) -> int | str:
    """Analytic FLOPs per image of a row: which blocks run on which step (as `expected_block_forwards`).

    baseline S x (sum of blocks + non-block); the cache skips its blocks C on the S - ceil(S/k) cached steps;
    ILF adds, on each feedback step, the loop blocks b..e again, F (= B_e's FLOPs) and cond(t_post) (unless
    `t_post="default"`: t_post = t).

    Args:
        config: None (the plain backbone), a `FeedbackConfig`, a `CacheConfig`, or a peer's config (counted
            from its `expected_block_forwards` where every block costs the same; else `"dynamic"`).
        flops: the model's `ModelFlops` at the row's tokens.
        num_steps: S, the sampling steps.
        calls_per_step: model calls per step (2 where guidance runs as two calls, e.g. FLUX's `true_cfg_scale`).

    Returns:
        FLOPs per image (`int`), or `"dynamic"` (counted from the run's block forwards only).

    Example:
        ```py
        expected_flops(FeedbackConfig(8, 19, "outer:4"), model_flops(config, 1024, 120), 10)
        ```
    """
    from .accounting import expected_block_forwards

    n, s = len(flops.blocks), num_steps
    forwards = expected_block_forwards(config, n, s)  # validates N, S and the config
    per_call = flops.per_call
    if config is None:
        total = s * per_call
    elif isinstance(config, CacheConfig):
        skipped = s - math.ceil(s / config.interval)
        total = s * per_call - skipped * sum(flops.blocks[i] for i in cached_block_indices(config, n))
    elif isinstance(config, FeedbackConfig):
        b, e = config.loop_start, config.loop_end
        extra = sum(flops.blocks[b:e + 1]) + flops.blocks[e] + _t_post_condition(config, flops)
        total = s * per_call + extra * len(resolve_feedback_steps(config.feedback_steps, s))
    else:
        total = flops_of_block_forwards(forwards, flops, s)
        if total == DYNAMIC:
            return DYNAMIC
    return total * calls_per_step


def flops_of_block_forwards(forwards: int | str, flops: ModelFlops, num_steps: int) -> int | str:
    """FLOPs per image from a block-forward count alone (a peer's analytic count): forwards x block FLOPs +
    S x non-block, where every block costs the same; `"dynamic"` otherwise (which blocks ran is not known)."""
    if isinstance(forwards, int) and len(set(flops.blocks)) == 1:
        return forwards * flops.blocks[0] + num_steps * flops.non_block
    return DYNAMIC


@dataclass
class ModelCalls:
    """Model calls counted while active, with the tokens of each call (what `count_model_calls` yields).

    Args:
        calls (`int`): transformer calls (one per step when guidance is batched).
        image_tokens (`int`), text_tokens (`int`): N and L per sequence of the last call.
    """

    calls: int = 0
    image_tokens: int = 0
    text_tokens: int = 0


def call_tokens(model: Any, kwargs: Mapping[str, Any], args: tuple = ()) -> tuple[int, int]:
    """(N, L) per sequence of one transformer call from its inputs' shapes."""
    cls = type(model).__name__
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    l = int(text.shape[1]) if text is not None and text.ndim == 3 else 0
    if cls in _PACKED:
        return int(hidden.shape[1]), l
    patch = model.config.get("patch_size") or 1
    dims = tuple(patch) if isinstance(patch, (list, tuple)) else (int(patch),) * (hidden.ndim - 2)
    return math.prod(int(s) // p for s, p in zip(hidden.shape[2:], dims)), l


@contextmanager
def count_model_calls(target: Any) -> Iterator[ModelCalls]:
    """Count transformer calls and their tokens (a forward pre-hook; removed on exit).

    Args:
        target: a transformer or a stock pipeline holding one.

    Returns:
        A context manager yielding the `ModelCalls`.

    Example:
        ```py
        with ilf.count_block_forwards(pipe) as blocks, count_model_calls(pipe) as calls:
            pipe("a red fox", num_inference_steps=20)
        mf = model_flops(pipe.transformer, calls.image_tokens, calls.text_tokens)
        flops_per_image = mf.from_counts(blocks.per_block, calls.calls)
        ```
    """
    from .attach import resolve_target

    model, _ = resolve_target(target)
    counter = ModelCalls()

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        counter.calls += 1
        counter.image_tokens, counter.text_tokens = call_tokens(module, kwargs, args)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()
