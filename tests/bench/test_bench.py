"""`ilf bench`: the sampling loop equals the stock pipelines', the rows' counts and ratios, the CSV, the command."""
import csv

import numpy as np
import pytest
import torch

from ilf.bench.loop import SamplingInputs, make_inputs, sample
from ilf.bench.rows import REFERENCE_ROW, ROWS, select_rows
from ilf.bench.run import CSV_COLUMNS, BenchSettings, format_table, run_bench, write_csv
from ilf.errors import ILFConfigError
from bench_models import tiny_builder
from tiny import tiny_pipeline
from tolerances import tiny_pipeline_tol

CORE_COLUMNS = ["method", "steps", "block_forwards_analytic", "block_forwards_measured", "seconds_median",
                 "seconds_min", "seconds_max", "speedup_measured", "speedup_blocks", "efficiency", "device", "dtype",
                 "resolution", "batch", "versions", "command"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.numerics
def test_pixart_loop_equals_stock_pipeline():
    pipe = tiny_pipeline("pixart-alpha", num_layers=3)
    inputs = make_inputs(pipe.transformer, 1, 16, 4.5, seed=1, text_tokens=5)
    neg, pos = inputs.cond["encoder_hidden_states"].chunk(2)
    mask = inputs.cond["encoder_attention_mask"][:1]
    with torch.no_grad():
        ours = sample(pipe.transformer, pipe.scheduler, inputs, 4)
    ref = pipe(num_inference_steps=4, guidance_scale=4.5, height=16, width=16, output_type="latent",
               use_resolution_binning=False, latents=inputs.latents.clone(), prompt_embeds=pos,
               prompt_attention_mask=mask, negative_prompt=None, negative_prompt_embeds=neg,
               negative_prompt_attention_mask=mask).images
    tol = tiny_pipeline_tol(3, 4)  # the same model and scheduler through another loop
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


@pytest.mark.numerics
def test_dit_loop_equals_stock_pipeline():
    pipe = tiny_pipeline("dit", num_layers=3)
    gen = torch.Generator().manual_seed(3)
    ref = pipe(class_labels=[7], num_inference_steps=4, generator=gen, guidance_scale=4.0, output_type="np").images
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # as DiTPipeline draws them
    inputs = SamplingInputs(latents, 4.0, dict(class_labels=torch.tensor([7, 1000])))
    with torch.no_grad():
        out = sample(pipe.transformer, pipe.scheduler, inputs, 4)
        image = pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample
    ours = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    tol = tiny_pipeline_tol(3, 4)  # the same model, scheduler and VAE through another loop
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


def test_select_rows_puts_reference_first_and_rejects_unknown():
    assert [r.name for r in select_rows("ilf-t1,cache-t1,ilf-t1")] == [REFERENCE_ROW, "ilf-t1", "cache-t1"]
    assert [r.name for r in select_rows("all")] == list(ROWS)
    with pytest.raises(ILFConfigError, match="rows"):
        select_rows("ilf-t1,nope")


def test_command_row_names_match_rows():
    from ilf.commands.bench import ROW_NAMES

    assert ROW_NAMES == tuple(ROWS)


def test_paper_rows_have_the_papers_block_counts():
    from ilf import expected_block_forwards

    got = {n: expected_block_forwards(r.config, 28, r.steps) for n, r in ROWS.items()}
    assert got == {"baseline-20": 560, "baseline-12": 336, "cache-t1": 326, "cache-t4": 380, "ilf-t1": 332,
                   "ilf-t4": 388, "ilf-t3-small": 420, "fbcache-0.05": "dynamic", "fbcache-0.2": "dynamic",
                   "dbcache-static": 317, "dbcache-static-ts": 317, "dbcache-dynamic": "dynamic", "taylorseer": 336,
                   "pab": 560}


@pytest.mark.parametrize("backbone", ["pixart-alpha-1024", "dit-xl-2-256"])
def test_run_bench_records_counts_ratios_and_csv(tmp_path, backbone):
    rows = "cache-t1,ilf-t1,fbcache-0.2"
    settings = BenchSettings(backbone=backbone, dtype="fp32", resolution=16, repeats=2, rows=rows, text_tokens=4,
                             command="ilf bench --test")
    records = run_bench(settings, build=tiny_builder, progress=False)
    assert [r["row"] for r in records] == [REFERENCE_ROW] + rows.split(",")
    by = {r["row"]: r for r in records}
    for name in ("baseline-20", "cache-t1", "ilf-t1"):  # the hooks count exactly what the formulas say
        assert by[name]["block_forwards_measured"] == by[name]["block_forwards_analytic"]
    assert by["fbcache-0.2"]["block_forwards_analytic"] == "dynamic"
    assert 20 <= by["fbcache-0.2"]["block_forwards_measured"] <= 560
    for r in records:
        assert r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"]
        assert len(r["seconds_all"].split()) == 2
        assert r["speedup_measured"] == pytest.approx(by[REFERENCE_ROW]["seconds_median"] / r["seconds_median"])
        assert r["speedup_blocks"] == pytest.approx(560 / r["block_forwards_measured"])
        assert r["efficiency"] == pytest.approx(r["speedup_measured"] / r["speedup_blocks"])
        assert r["peak_memory_mib"] is None or r["peak_memory_mib"] > 0
    assert by[REFERENCE_ROW]["efficiency"] == pytest.approx(1.0)
    assert "ilf-t1" in format_table(records)
    path = write_csv(records, tmp_path / "bench.csv")
    with open(path) as fh:
        reader = csv.DictReader(fh)
        rows_read = list(reader)
    assert reader.fieldnames[: len(CORE_COLUMNS)] == CORE_COLUMNS
    assert list(reader.fieldnames) == list(CSV_COLUMNS)
    assert {"peak_memory_mib", "peak_memory_vs_reference_mib"} <= set(reader.fieldnames)
    assert rows_read[1]["method"] == "cache" and rows_read[1]["command"] == "ilf bench --test"


def test_cli_rejects_bad_rows_before_building_anything(capsys):
    from ilf.cli import main

    assert main(["bench", "--rows", "ilf-t1,bogus"]) == 2
    assert "rows" in capsys.readouterr().err


def test_command_line_spells_every_option():
    import argparse

    from ilf.commands.bench import add_arguments, command_line

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--device", "cuda", "--rows", "ilf-t1", "--compile", "--resolution", "512"])
    line = command_line(args)
    assert line.startswith("ilf bench --backbone pixart-alpha-1024 --device cuda --dtype bf16")
    assert "--rows ilf-t1" in line and "--compile" in line and "--resolution 512" in line
    again = p.parse_args(line.split()[2:])
    assert command_line(again) == line


def test_build_model_keeps_the_real_blocks_at_reduced_resolution():
    from ilf.bench.run import build_model
    from ilf.registry import build_transformer

    small = build_model("pixart-alpha-1024", 64, "meta", torch.bfloat16)
    real = build_transformer("pixart-alpha-1024", device="meta")
    assert small.config.sample_size == 8 and small.use_additional_conditions == real.use_additional_conditions
    assert len(small.transformer_blocks) == 28
    assert [p.shape for p in small.transformer_blocks.parameters()] == [p.shape for p in real.transformer_blocks.parameters()]
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in small.parameters())


def test_flops_per_block_forward_at_the_papers_sizes():
    """`ilf bench`'s FLOPs per block forward: `ilf.flops` per sequence x the CFG batch (formulas checked against
    FlopCounterMode in tests/core/test_flops.py)."""
    from ilf.bench.records import Setup
    from ilf.flops import block_flops, model_flops
    from ilf.registry import get_backbone

    spec = get_backbone("pixart-alpha-1024")
    d, n = 1152, 4096  # by hand: 2 FLOPs x 2 sequences x (12 N D^2 + 2 N^2 D + 2 N D^2 + 2 L D^2 + 2 N L D)
    pixart = block_flops(spec.transformer_config, 0, n, 120, model_class=spec.transformer_class)
    assert 2 * pixart == 4 * (12 * n * d * d + 2 * n * n * d + 2 * n * d * d + 2 * 120 * d * d + 2 * n * 120 * d)
    mf = model_flops(spec.transformer_config, n, 120, model_class=spec.transformer_class)
    setup = Setup(None, 28, 1024, 120, 0.0, "cpu", "", mf, 2)
    assert setup.flops == 2 * pixart
    assert 348 < setup.flops * 560 / 0.746 / 1e12 < 350  # docs/bench.md: 349 TFLOP/s at the H200's 0.746 s baseline
    assert mf.non_block * 20 / (mf.per_call * 20) < 1e-3  # embeddings + head: below 0.1% of a run


def test_speed_variants_record_compile_sdpa_flops_and_exactness(tmp_path):
    """Every compile scope x SDPA backend is one variant; compiled rows match eager, FLOP/s follow the counts."""
    settings = BenchSettings(backbone="dit-xl-2-256", dtype="fp32", resolution=16, repeats=1, rows="cache-t1,ilf-t1",
                             compile="none,regional", compile_backend="eager", sdpa="default,math")
    seen = []
    records = run_bench(settings, build=tiny_builder, progress=False, on_variant=lambda recs: seen.append(len(recs)))
    assert seen == [3, 6, 9, 12]  # the callback fires after each variant with everything so far
    assert [(r["compile"], r["sdpa_backend"]) for r in records[::3]] == [("none", "default"), ("none", "math"),
                                                                          ("regional", "default"), ("regional", "math")]
    for r in records:
        assert r["error"] == ""
        # same model, exact settings: only rounding may differ (28 blocks + ILF's 12 + F, 20 steps)
        assert r["rel_diff_vs_eager"] < tiny_pipeline_tol(28 + 12 + 1, 20)
        assert r["tflops_achieved"] == pytest.approx(r["flops_measured"] / r["seconds_median"] / 1e12)
        # FLOPs of the run: per image from the counted calls (ilf.flops) x 2 sequences (guidance batch)
        assert r["flops_measured"] == r["flops_analytic"] == 2 * r["flops_per_image"]
        ref = next(x for x in records if x["row"] == "baseline-20")
        assert r["speedup_flops"] == ref["flops_per_image"] / r["flops_per_image"]
        # equal blocks: the FLOPs ratio is the block-forward ratio up to the embeddings and head per call
        assert r["speedup_flops"] == pytest.approx(r["speedup_blocks"], rel=0.05)
        assert r["compiled"] == (r["compile"] != "none")
        if r["compiled"]:
            assert r["graphs_compiled"] is not None and r["recompiles_timed"] is not None
    assert records[0]["speedup_vs_eager_reference"] == pytest.approx(1.0)
    assert "scaled_dot_product" in records[3]["attention_ops"]  # the math backend is seen by the profiler
    path = write_csv(records, tmp_path / "bench.csv")
    with open(path) as fh:
        assert len(list(csv.DictReader(fh))) == 12


def test_failing_row_is_recorded_not_fatal():
    """A plugged-in row whose method fails keeps its error in the CSV; the other rows are still timed."""
    from ilf.bench.rows import BenchRow, register_row

    def broken(model, config, scheduler):
        raise RuntimeError("peer library missing")

    register_row(BenchRow("broken-peer", "peer", 20, None, "peer: broken", apply=broken, analytic=lambda n, s: "dynamic"))
    try:
        settings = BenchSettings(backbone="pixart-alpha-1024", dtype="fp32", resolution=16, repeats=1, text_tokens=4,
                                 rows="ilf-t1,broken-peer")
        records = run_bench(settings, build=tiny_builder, progress=False)
    finally:
        ROWS.pop("broken-peer")
    by = {r["row"]: r for r in records}
    assert "RuntimeError: peer library missing" in by["broken-peer"]["error"]
    assert by["broken-peer"]["block_forwards_measured"] is None and by["broken-peer"]["seconds_all"] == ""
    assert by["ilf-t1"]["error"] == "" and by["ilf-t1"]["block_forwards_measured"] == 332
    assert "broken-peer" in format_table(records)


def test_summary_picks_the_fastest_exact_setting(tmp_path):
    from ilf.bench.summary import summarize_folder

    base = {"backbone": "pixart-alpha-1024", "row": "ilf-t1", "error": "", "efficiency": "1.0"}
    recs = [dict(base, seconds_median="0.44", compile="none", sdpa_backend="default", rel_diff_vs_eager="0"),
            dict(base, seconds_median="0.25", compile="whole", sdpa_backend="flash", rel_diff_vs_eager="0.5"),  # not exact
            dict(base, seconds_median="0.29", compile="regional", sdpa_backend="cudnn", rel_diff_vs_eager="0.004"),
            dict(base, seconds_median="0.20", compile="whole", sdpa_backend="cudnn", rel_diff_vs_eager="0",
                 error="RuntimeError: x")]
    with open(tmp_path / "a.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    out = summarize_folder(tmp_path)
    best = out["fastest"]["pixart-alpha-1024"]["ilf-t1"]
    assert (best["compile"], best["sdpa_backend"], best["seconds_median"]) == ("regional", "cudnn", "0.29")
    goal = [g for g in out["goals"] if g["row"] == "ilf-t1"][0]
    assert goal["met"] and goal["seconds"] == pytest.approx(0.29)
    assert not [g for g in out["goals"] if g["row"] == "baseline-20"][0]["met"]  # no DiT record: not met


def test_methods_add_no_host_work_per_block_forward():
    """One profiled run per row: the host ops a row dispatches per block forward stay within the baseline's plus
    the per-call share a row with fewer blocks per call carries (the cache runs 20 calls for 326 blocks): a method
    that adds host work per block (a sync, a copy) fails. Deterministic op counts, not timings."""
    settings = BenchSettings(backbone="dit-xl-2-256", dtype="fp32", resolution=16, repeats=1, rows="cache-t1,ilf-t1",
                             text_tokens=4)
    rec = {r["row"]: r for r in run_bench(settings, build=tiny_builder, progress=False)}
    base = rec["baseline-20"]
    assert base["host_ops"] > base["block_forwards_measured"] * 10 and base["device_kernel_seconds"] is None  # CPU
    assert rec["ilf-t1"]["host_ops_per_block_forward"] <= 1.02 * base["host_ops_per_block_forward"]
    assert rec["cache-t1"]["host_ops_per_block_forward"] <= 1.08 * base["host_ops_per_block_forward"]
