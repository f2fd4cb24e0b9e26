"""The peers configs/modern.yaml runs on the pipelines that guide as two transformer calls per step: the tiny
QwenImagePipeline (true CFG) and WanPipeline (CFG 5.0). A static peer's schedule is per step, so the cond and the
uncond call of a step each cost the analytic count: 2 x `expected_block_forwards` per image; a dynamic one skips
blocks; both give the same output on a second run (per-run state reset)."""
from __future__ import annotations

import pytest
import torch
from tiny_qwenimage import qwen_pipeline, run_qwen
from tiny_wan import run_wan, tiny_wan_pipeline

from ilf import count_block_forwards
from ilf.peers import apply_peer, calibrate_magcache, peer_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N, S = 6, 8
FAMILIES = {"qwen-image": (qwen_pipeline, run_qwen), "wan": (tiny_wan_pipeline, run_wan)}
SETTINGS = {
    "dbcache-static": ("dbcache", {"compute_steps": 4}),
    "dbcache-static-taylorseer": ("dbcache", {"compute_steps": 4, "taylorseer": True}),
    "dbcache-dynamic": ("dbcache", {"policy": "dynamic", "residual_diff_threshold": 0.5, "max_warmup_steps": 2}),
    "fbcache": ("fbcache", {"threshold": 0.2}),
    "magcache": ("magcache", {"threshold": 0.5}),
    "taylorseer": ("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 2}),
}
ROWS = [(family, r) for family in FAMILIES for r in SETTINGS]  # what configs/modern.yaml runs on each


@pytest.mark.parametrize("family,row", ROWS)
def test_peer_counts_both_guidance_calls(family, row):
    name, settings = SETTINGS[row]
    if name == "dbcache":
        pytest.importorskip("cache_dit")
    make, run = FAMILIES[family]
    pipe = make(N)
    with count_block_forwards(pipe) as plain:
        base = run(pipe, S)
    assert plain.count == 2 * N * S  # cond and uncond: two calls per step
    settings = dict(settings)
    if name == "magcache":
        settings["mag_ratios"] = calibrate_magcache(pipe, lambda: run(pipe, S), S)
    cfg = peer_config(name, settings)
    apply_peer(pipe, cfg, num_steps=S)
    counts, outs = [], []
    for _ in range(2):
        with count_block_forwards(pipe) as c:
            outs.append(run(pipe, S))
        counts.append(c.count)
    expected = cfg.expected_block_forwards(N, S)
    assert counts[0] == counts[1] and torch.equal(outs[0], outs[1])
    if expected == "dynamic":
        assert 2 * N <= counts[0] < plain.count  # something skipped, something ran
    else:
        assert counts[0] == 2 * expected < plain.count
    assert not torch.equal(outs[0], base)


@pytest.mark.parametrize("true_cfg_scale", [1.0, 4.0])
def test_taylorseer_on_qwen_image_counts_its_schedule(true_cfg_scale):
    """TaylorSeer's schedule is fixed (`cache_interval`, `disable_cache_before_step`): on QwenImagePipeline it
    computes every block on its compute steps only, per transformer call: the analytic count without true CFG,
    twice it with (each call keeps its own state: the pipeline's `cache_context("cond")` / `("uncond")`)."""
    pipe = qwen_pipeline(N)
    cfg = peer_config("taylorseer", dict(SETTINGS["taylorseer"][1]))
    apply_peer(pipe, cfg, num_steps=S)
    with count_block_forwards(pipe) as c:
        run_qwen(pipe, S, true_cfg_scale=true_cfg_scale)
    calls = 2 if true_cfg_scale > 1 else 1
    assert cfg.expected_block_forwards(N, S) == N * len(cfg.compute_steps(S)) == 30
    assert c.count == calls * 30 < calls * N * S
