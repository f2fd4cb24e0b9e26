"""`ilf bench`: the sampling loop equals the stock pipelines', the rows' counts and ratios, the CSV, the command."""
import csv

import numpy as np
import pytest
import torch

from ilf.bench.loop import SamplingInputs, make_inputs, sample
from ilf.bench.rows import REFERENCE_ROW, ROWS, select_rows
from ilf.bench.run import CSV_COLUMNS, BenchSettings, format_table, run_bench, write_csv
from ilf.errors import ILFConfigError
from tiny import tiny_dit, tiny_pipeline, tiny_pixart

ISSUE_COLUMNS = ["method", "steps", "block_forwards_analytic", "block_forwards_measured", "seconds_median",
                 "seconds_min", "seconds_max", "speedup_measured", "speedup_blocks", "efficiency", "device", "dtype",
                 "resolution", "batch", "versions", "command"]


def tiny_builder(backbone, resolution, device, dtype):
    """Stand-in for `build_model`: a tiny 28-block model of the backbone's class (the real one is minutes on CPU)."""
    make = tiny_dit if backbone.startswith("dit") else tiny_pixart
    return make(num_layers=28, sample_size=resolution // 8).to(device, dtype).requires_grad_(False)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared 2-core machine: one thread avoids oversubscription stalls
    yield
    torch.set_num_threads(n)


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
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


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
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


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
                   "ilf-t4": 388, "ilf-t3-small": 420, "fbcache-0.05": "dynamic", "fbcache-0.2": "dynamic"}


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
    assert reader.fieldnames[: len(ISSUE_COLUMNS)] == ISSUE_COLUMNS
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
