"""`ilf bench` on the flow-matching families (FLUX.1, SD3.5, Qwen-Image, Wan) with `--tiny` configs of the real
classes and depths: the run completes, every row's counted block forwards and FLOPs equal the analytic ones,
the CSV has every column, and the loop is the stock pipeline's."""
import csv

import pytest
import torch

from ilf.bench.inputs import calls_per_step, make_flow_inputs, sample_flow, scheduler_for
from ilf.bench.models import build_model
from ilf.bench.rows import default_loop, scaled_rows
from ilf.bench.run import CSV_COLUMNS, BenchSettings, run_bench, write_csv
from ilf.errors import ILFConfigError
from ilf.registry import get_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAMILIES = ["flux1-dev", "sd35-large", "qwen-image", "wan21-t2v-1.3b"]


@pytest.mark.parametrize("backbone", FAMILIES)
def test_tiny_bench_counts_equal_analytic_and_csv_has_every_column(tmp_path, backbone):
    settings = BenchSettings(backbone=backbone, tiny=True, resolution=32, text_tokens=4, repeats=1, dtype="fp32",
                             rows="cache-t1,ilf-t1", profile=False)
    records = run_bench(settings, progress=False)
    spec = get_backbone(backbone)
    assert [r["row"] for r in records] == [f"baseline-{spec.default_steps}", "cache-t1", "ilf-t1"]
    calls = calls_per_step(spec, settings.resolved_guidance())
    for r in records:
        assert not r["error"], r["error"]
        assert r["block_forwards_measured"] == r["block_forwards_analytic"], r["row"]
        assert r["flops_measured"] == r["flops_analytic"], r["row"]
        assert r["calls_per_step"] == calls
    base = records[0]
    assert base["block_forwards_measured"] == spec.default_steps * spec.num_blocks * calls
    assert base["speedup_blocks"] == 1.0 and records[2]["speedup_blocks"] > 1.0
    path = write_csv(records, tmp_path / "b.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 3
    for col in ("speedup_blocks", "speedup_flops", "flops_per_image", "block_forwards_measured", "width", "frames"):
        assert all(row[col] for row in rows), col


def test_dbcache_row_runs_at_ilfs_budget_on_flux(tmp_path):
    pytest.importorskip("cache_dit")
    records = run_bench(BenchSettings(backbone="flux1-dev", tiny=True, resolution=32, text_tokens=4, repeats=1,
                                      dtype="fp32", rows="dbcache-t1", profile=False), progress=False)
    db = records[1]
    assert not db["error"], db["error"]
    assert db["block_forwards_measured"] == db["block_forwards_analytic"] == 28 + 16 * 56


def test_scaled_rows_follow_table_1():
    rows = scaled_rows(28, 20)  # the paper's backbone: Table 1's own rows and budgets
    assert {n: r.block_forwards_analytic(28) for n, r in rows.items()} == {
        "baseline-20": 560, "baseline-10": 280, "cache-t1": 326, "ilf-t1": 332, "dbcache-t1": 317}
    assert default_loop(28) == (8, 19) and default_loop(57) == (16, 40) and default_loop(30) == (9, 20)
    flux = scaled_rows(57, 28)
    assert flux["ilf-t1"].steps == 14 and flux["ilf-t1"].config.feedback_steps == "outer:6"
    two = scaled_rows(30, 50, calls=2)  # guidance as two calls: every count doubles
    assert two["baseline-50"].block_forwards_analytic(30) == 2 * 50 * 30


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_flux_loop_equals_stock_pipeline(dtype):
    from diffusers import FluxPipeline

    model = build_model("flux1-dev", 32, "cpu", dtype, tiny=True)
    spec = get_backbone("flux1-dev")
    inputs = make_flow_inputs(model, spec, 1, 32, 32, 1, 3.5, 0, 4, "cpu", dtype)
    pipe = FluxPipeline(scheduler=scheduler_for(spec), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=model)
    pipe.vae_scale_factor = 8
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ours = sample_flow(model, scheduler_for(spec), inputs, 3, lambda: None)
        ref = pipe(prompt_embeds=inputs.cond["encoder_hidden_states"],
                   pooled_prompt_embeds=inputs.cond["pooled_projections"], latents=inputs.latents.clone(),
                   height=32, width=32, num_inference_steps=3, guidance_scale=3.5, output_type="latent").images
    assert torch.equal(ours, ref)  # the same calls on the same inputs in the same order


@pytest.mark.numerics
def test_wan_loop_equals_stock_pipeline():
    from diffusers import WanPipeline

    model = build_model("wan21-t2v-1.3b", 32, "cpu", torch.float32, tiny=True)
    spec = get_backbone("wan21-t2v-1.3b")
    inputs = make_flow_inputs(model, spec, 1, 32, 48, 5, 5.0, 0, 4, "cpu", torch.float32)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler_for(spec), transformer=model)
    pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial = 4, 8
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ours = sample_flow(model, scheduler_for(spec), inputs, 3, lambda: None)
        ref = pipe(prompt_embeds=inputs.cond["encoder_hidden_states"],
                   negative_prompt_embeds=inputs.uncond["encoder_hidden_states"], latents=inputs.latents.clone(),
                   height=32, width=48, num_frames=5, num_inference_steps=3, guidance_scale=5.0,
                   output_type="latent").frames
    assert torch.equal(ours, ref)


def test_bad_frames_and_no_blocks_are_refused():
    with pytest.raises(ILFConfigError, match="frames"):
        BenchSettings(backbone="wan21-t2v-1.3b", frames=6).validate()
    with pytest.raises(ILFConfigError, match="no_blocks"):
        BenchSettings(backbone="flux1-dev", no_blocks=True).validate()
    with pytest.raises(ILFConfigError, match="rows"):
        BenchSettings(backbone="flux1-dev", rows="baseline-20").validate()  # PixArt's reference is not FLUX's


@pytest.mark.numerics
def test_sd3_loop_equals_stock_pipeline():
    from diffusers import StableDiffusion3Pipeline

    model = build_model("sd35-large", 32, "cpu", torch.float32, tiny=True)
    spec = get_backbone("sd35-large")
    inputs = make_flow_inputs(model, spec, 1, 32, 32, 1, 3.5, 0, 4, "cpu", torch.float32)
    neg, pos = inputs.cond["encoder_hidden_states"].chunk(2)  # [negative, positive] as the pipeline concatenates
    neg_pooled, pooled = inputs.cond["pooled_projections"].chunk(2)
    pipe = StableDiffusion3Pipeline(transformer=model, scheduler=scheduler_for(spec), vae=None, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ours = sample_flow(model, scheduler_for(spec), inputs, 3, lambda: None)
        ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                   negative_pooled_prompt_embeds=neg_pooled, latents=inputs.latents.clone(), height=32, width=32,
                   num_inference_steps=3, guidance_scale=3.5, output_type="latent").images
    assert torch.equal(ours, ref)


@pytest.mark.numerics
def test_qwenimage_loop_equals_stock_pipeline():
    from diffusers import QwenImagePipeline

    model = build_model("qwen-image", 32, "cpu", torch.float32, tiny=True)
    spec = get_backbone("qwen-image")
    inputs = make_flow_inputs(model, spec, 1, 32, 32, 1, 4.0, 0, 4, "cpu", torch.float32)
    pipe = QwenImagePipeline(scheduler=scheduler_for(spec), vae=None, text_encoder=None, tokenizer=None,
                             transformer=model)
    pipe.set_progress_bar_config(disable=True)
    c, u = inputs.cond, inputs.uncond
    with torch.no_grad():
        ours = sample_flow(model, scheduler_for(spec), inputs, 3, lambda: None)
        ref = pipe(prompt_embeds=c["encoder_hidden_states"], prompt_embeds_mask=c["encoder_hidden_states_mask"],
                   negative_prompt_embeds=u["encoder_hidden_states"],
                   negative_prompt_embeds_mask=u["encoder_hidden_states_mask"], true_cfg_scale=4.0,
                   latents=inputs.latents.clone(), height=32, width=32, num_inference_steps=3,
                   output_type="latent").images
    assert torch.equal(ours, ref)
