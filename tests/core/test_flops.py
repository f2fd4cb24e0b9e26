"""Analytic FLOPs (ilf/flops.py) against torch's FlopCounterMode on tiny real diffusers classes, and per row."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tiny import model_inputs, tiny_dit, tiny_pixart
from tiny_families import TEXT_TOKENS, tiny_flux, tiny_qwenimage, tiny_sana, tiny_sd3, tiny_wan

from ilf import CacheConfig, FeedbackConfig, expected_block_forwards
from ilf.flops import (block_flops, block_flops_breakdown, call_tokens, count_model_calls, expected_flops,
                       image_tokens, model_flops)

BATCH = 2  # sequences per call: every count below is 2 x the per-sequence formula


def _pixart(**kw):
    model = tiny_pixart(num_layers=2, **kw)
    inputs = model_inputs(model, BATCH)
    if kw.get("use_additional_conditions"):
        inputs["added_cond_kwargs"] = {"resolution": torch.tensor([[64.0, 64.0]] * BATCH),
                                       "aspect_ratio": torch.tensor([[1.0]] * BATCH)}
    return model, inputs


def _dit():
    model = tiny_dit(num_layers=2)
    return model, model_inputs(model, BATCH)


FAMILIES = {
    "pixart": lambda: _pixart(),
    "pixart-size-conditions": lambda: _pixart(use_additional_conditions=True, num_attention_heads=3,
                                              cross_attention_dim=24),
    "dit": _dit,
    "flux": lambda: tiny_flux(BATCH),
    "flux-schnell": lambda: tiny_flux(BATCH, guidance=False),
    "sd3.5-medium": lambda: tiny_sd3(BATCH),
    "sd3": lambda: tiny_sd3(BATCH, dual_attention_layers=()),
    "qwenimage": lambda: tiny_qwenimage(BATCH),
    "wan": lambda: tiny_wan(BATCH),
    "sana": lambda: tiny_sana(BATCH),
}


def _counted(model, kwargs) -> tuple[int, dict[str, int]]:
    """FlopCounterMode's total and per-module FLOPs of one forward (math SDPA, so attention is counted)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, depth=None) as counter:
        model(**kwargs)
    prefix = type(model).__name__ + "."
    by_module = {k[len(prefix):]: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith(prefix)}
    return counter.get_total_flops(), by_module


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_flops_match_flop_counter_exactly(family):
    """Every block's formula and the non-block remainder (embeddings + head) equal FlopCounterMode's integer
    counts: the formula counts exactly the matrix products (module docstring), nothing else."""
    model, kwargs = FAMILIES[family]()
    n, l = call_tokens(model, kwargs)
    mf = model_flops(model, n, l)
    total, by_module = _counted(model, kwargs)
    assert len(mf.blocks) == len(mf.block_names) >= 2
    for i, name in enumerate(mf.block_names):
        assert by_module[name] == BATCH * mf.blocks[i] == BATCH * block_flops(model, i, n, l), name
    assert total - BATCH * sum(mf.blocks) == BATCH * mf.non_block
    assert total == BATCH * mf.per_call


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_flop_counts_do_not_depend_on_dtype(dtype):
    model, kwargs = tiny_flux(BATCH)
    model.to(dtype)
    kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    assert _counted(model, kwargs)[0] == BATCH * model_flops(model, *call_tokens(model, kwargs)).per_call


def test_block_kinds_differ_in_cost_and_parts():
    """FLUX: a double-stream block != a single-stream block; SD3: the dual-attention block and the
    context_pre_only last block differ from a plain joint block by their stated parts."""
    flux, _ = tiny_flux(1)
    double, single = block_flops_breakdown(flux, 0, 16, 5), block_flops_breakdown(flux, 2, 16, 5)
    assert set(double) == {"adaln", "attn_proj", "attn_sdpa", "ff"} and set(single) == {"adaln", "attn_proj",
                                                                                       "attn_sdpa", "mlp"}
    assert sum(double.values()) != sum(single.values())
    sd3, _ = tiny_sd3(1)
    dual, plain, last = (block_flops_breakdown(sd3, i, 16, 5) for i in range(3))
    d, n, l = 16, 16, 5
    assert dual["attn2"] == 2 * 4 * n * d * d + 4 * n * n * d
    assert dual["adaln"] - plain["adaln"] == 2 * d * 3 * d
    assert plain["ff"] - last["ff"] == 2 * 2 * l * d * 4 * d  # no context FF
    assert plain["attn_proj"] - last["attn_proj"] == 2 * l * d * d  # no context output projection
    with pytest.raises(Exception, match="block_index"):
        block_flops(flux, 5, 16, 5)


def test_image_tokens_per_family():
    flux, _ = tiny_flux(1)
    sd3, _ = tiny_sd3(1)
    sana, _ = tiny_sana(1)
    wan, _ = tiny_wan(1)
    assert image_tokens(flux, 1024) == 64 * 64  # 8 x VAE, 2 x 2 packing
    assert image_tokens(sd3, 1024, 512) == 64 * 32
    assert image_tokens(sana, 1024) == 32 * 32  # DC-AE: 32 x
    assert image_tokens(wan, 480, 832, num_frames=81) == 21 * 30 * 52
    assert image_tokens(tiny_pixart(1), 512) == 32 * 32


def test_papers_sizes_by_hand():
    """PixArt-alpha 1024 and DiT-XL/2 256 blocks written out from the formula (D = 1152, 120 caption tokens)."""
    from ilf.registry import get_backbone

    spec = get_backbone("pixart-alpha-1024")
    d, n, l = 1152, 4096, 120
    assert image_tokens(spec.transformer_config, 1024, model_class=spec.transformer_class) == n
    assert block_flops(spec.transformer_config, 0, n, l, model_class=spec.transformer_class) == \
        2 * (12 * n * d * d + 2 * n * n * d + 2 * n * d * d + 2 * l * d * d + 2 * n * l * d)
    dit = get_backbone("dit-xl-2-256")
    assert block_flops(dit.transformer_config, 0, 256, model_class=dit.transformer_class) == \
        2 * (12 * 256 * d * d + 2 * 256 * 256 * d) + 2 * (256 * d + 7 * d * d)


ROWS = [None, CacheConfig("inner", 18, 3), CacheConfig("outer", 4, 2), FeedbackConfig(8, 19, "outer:4"),
        FeedbackConfig(0, 5, "all")]


@pytest.mark.parametrize("config", ROWS, ids=lambda c: type(c).__name__)
def test_expected_flops_is_block_forwards_times_block_for_equal_blocks(config):
    """On a backbone of equal blocks the FLOPs follow the block forwards: forwards x block + steps x non-block
    (+ one cond(t_post) per ILF feedback step)."""
    from ilf.registry import get_backbone
    from ilf.schedule import resolve_feedback_steps

    spec = get_backbone("pixart-alpha-512")
    mf = model_flops(spec.transformer_config, 1024, 120, model_class=spec.transformer_class)
    assert len(set(mf.blocks)) == 1 and len(mf.blocks) == 28
    steps = 20 if not isinstance(config, FeedbackConfig) else 10
    extra = mf.condition * len(resolve_feedback_steps(config.feedback_steps, steps)) \
        if isinstance(config, FeedbackConfig) else 0
    assert expected_flops(config, mf, steps) == \
        expected_block_forwards(config, 28, steps) * mf.blocks[0] + steps * mf.non_block + extra
    assert expected_flops(config, mf, steps, calls_per_step=2) == 2 * expected_flops(config, mf, steps)


def test_expected_flops_on_unequal_blocks():
    """FLUX (2 double + 3 single blocks): the cache skips the named blocks' own FLOPs; F costs B_e; a loop may
    cross the double/single boundary; a peer's static count on unequal blocks is 'dynamic'."""
    flux, _ = tiny_flux(1)
    mf = model_flops(flux, 16, 5)
    d, s = mf.blocks, 4
    assert d[0] != d[2]
    assert expected_flops(None, mf, s) == s * mf.per_call
    assert expected_flops(CacheConfig("last", 2, 2), mf, s) == s * mf.per_call - 2 * (d[3] + d[4])
    assert expected_flops(FeedbackConfig(1, 3, "all"), mf, s) == \
        s * (mf.per_call + d[1] + d[2] + d[3] + d[3] + mf.condition)

    class Peer:
        def expected_block_forwards(self, num_blocks, num_steps):
            return num_blocks * num_steps - 3

    assert expected_flops(Peer(), mf, s) == "dynamic"


def test_from_counts_equals_expected_flops_on_a_run():
    """FLOPs from counted calls (per-block block forwards + model calls) equal the analytic row FLOPs, and
    FlopCounterMode over the whole pipeline call (2 sequences: batched guidance) equals twice that, for the
    baseline, the cache and ILF (t_post != t: cond(t_post) counted) on a tiny PixArt pipeline."""
    import ilf
    from tiny import run_pipeline, tiny_pipeline

    steps = 4
    for config in (None, CacheConfig("inner", 2, 2), FeedbackConfig(1, 2, "all")):
        pipe = tiny_pipeline("pixart-alpha", num_layers=4)
        if isinstance(config, CacheConfig):
            ilf.apply_cache(pipe, config)
        elif isinstance(config, FeedbackConfig):
            ilf.apply_feedback(pipe, config)
        with ilf.count_block_forwards(pipe) as blocks, count_model_calls(pipe) as calls, \
                sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            run_pipeline(pipe, steps)  # latents out: no VAE; guidance batched (2 sequences per call)
        assert calls.calls == steps and (calls.image_tokens, calls.text_tokens) == (64, 6)
        mf = model_flops(pipe.transformer, calls.image_tokens, calls.text_tokens)
        fb = config if isinstance(config, FeedbackConfig) else None
        analytic = expected_flops(config, mf, steps)
        assert mf.from_counts(blocks.per_block, calls.calls, feedback=fb) == analytic
        assert counter.get_total_flops() == 2 * analytic


def test_one_ilf_call_matches_flop_counter():
    """A feedback call on a bare transformer: FlopCounterMode counts N + m + 1 block forwards' FLOPs and the
    non-block parts, as `expected_flops` says."""
    import ilf

    model = tiny_pixart(num_layers=4)
    inputs = model_inputs(model, BATCH)
    config = FeedbackConfig(1, 2, "all", t_post="default")  # a direct call outside a run: t_post = t
    ilf.apply_feedback(model, config)
    total, _ = _counted(model, inputs)
    mf = model_flops(model, 16, 6)
    assert total == BATCH * expected_flops(config, mf, 1) == BATCH * (mf.per_call + 2 * mf.blocks[0] + mf.blocks[2])
