"""`summarize_rows` (the row summary): tidy rows, speedups against the reference, accounting check, atomic CSVs."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from ilf.report.common import METRICS, summary_columns
from ilf.report.summarize import read_summary, summarize_rows
from report_fixtures import write_paper_like_results, write_row


def test_summary_columns_and_values(tmp_path):
    rows = write_paper_like_results(tmp_path)
    df = summarize_rows(rows, tmp_path, "paper", seed=7)
    assert list(df.columns) == summary_columns()
    assert (tmp_path / "summary.csv").exists()
    for r in rows:
        one = pd.read_csv(tmp_path / "rows" / f"{r['name']}.csv")
        assert len(one) == 1 and one["row"].iloc[0] == r["name"]
    s = read_summary(tmp_path / "summary.csv").set_index("row")
    # median over records, not mean: [0.6, 0.55, 0.59] -> 0.59
    assert s.loc["a512-ilf", "seconds_per_image"] == pytest.approx(0.59)
    # reference = same-group baseline with most steps (20 steps, median 1.1 s)
    assert s.loc["a512-ilf", "reference_row"] == "a512-b20"
    assert s.loc["a512-ilf", "speedup_seconds"] == pytest.approx(1.1 / 0.59)
    assert s.loc["a512-ilf", "speedup_blocks"] == pytest.approx(560 / 332)
    assert s.loc["a512-b20", "speedup_seconds"] == pytest.approx(1.0)
    # analytic FLOPs per image beside block forwards; rows whose records have none stay empty
    assert s.loc["a512-ilf", "flops_per_image"] == pytest.approx(3.5e13)
    assert s.loc["a512-ilf", "speedup_flops"] == pytest.approx(5.6e13 / 3.5e13)
    assert s.loc["a512-b20", "speedup_flops"] == pytest.approx(1.0)
    assert math.isnan(s.loc["a512-cache", "flops_per_image"]) and math.isnan(s.loc["a512-cache", "speedup_flops"])
    # a named reference_row wins (Table 2 pairs each ILF row with its own baseline)
    assert s.loc["dit-ilf10", "reference_row"] == "dit-b12"
    assert s.loc["dit-ilf10", "speedup_blocks"] == pytest.approx(336 / 304)
    assert s.loc["a512-ilf", "feedback_steps"] == "0,1,8,9"
    assert s.loc["a512-ilf", "loop_start"] == 8 and s.loc["a512-ilf", "training_iter"] == 5000
    assert s.loc["a512-cache", "cache_location"] == "inner" and s.loc["a512-cache", "cache_interval"] == 3
    assert s.loc["a512-ilf", "image_reward_ci_low"] == pytest.approx(88.0)
    assert s.loc["a512-ilf", "image_reward_n"] == 3
    assert math.isnan(s.loc["a512-ilf", "fid_imagenet"])
    assert s.loc["a512-b20", "resolution"] == 512 and s.loc["a512-b20", "seed"] == 7
    assert s.loc["a512-b20", "world"] == "paper" and s.loc["a512-b20", "config_hash"] == "abc123"
    assert s.loc["a512-b20", "table"] == "1,4"


def test_block_forward_mismatch_fails(tmp_path):
    write_row(tmp_path, "r", seconds=[1.0, 1.0], blocks=560, measured=559)
    rows = [dict(name="r", table=1, group="g", backbone="toy-t2i", steps=20, method="baseline")]
    with pytest.raises(ValueError, match="block_forwards_measured=559"):
        summarize_rows(rows, tmp_path, "toy")


def test_dynamic_accounting_and_missing_metrics(tmp_path):
    write_row(tmp_path, "fb", seconds=[1.0, 3.0], blocks=100, measured=90, analytic="dynamic")
    rows = [dict(name="fb", table=1, group="g", backbone="toy-t2i", steps=20, method="fbcache")]
    with pytest.warns(UserWarning, match="metrics_summary"):
        df = summarize_rows(rows, tmp_path, "toy")
    assert df["block_forwards_analytic"].iloc[0] == "dynamic"
    assert df["block_forwards_measured"].iloc[0] == 90
    assert df["seconds_per_image"].iloc[0] == 2.0
    assert df["resolution"].iloc[0] == 32  # toy backbones
    assert all(math.isnan(df[m].iloc[0]) for m in METRICS)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="method"):
        summarize_rows([dict(name="x", method="magic", steps=1)], tmp_path, "toy")
    with pytest.raises(ValueError, match="world"):
        summarize_rows([dict(name="x", method="baseline")], tmp_path, "moon")
    with pytest.raises(FileNotFoundError, match="ilf generate"):
        summarize_rows([dict(name="x", method="baseline", steps=1)], tmp_path, "toy")
    df = summarize_rows([dict(name="x", method="baseline", steps=1)], tmp_path, "toy", allow_missing=True)
    assert math.isnan(df["seconds_per_image"].iloc[0])


def test_fidelity_columns_and_the_reference_rows_empty_value(tmp_path):
    """psnr_ref etc. are named as the other per-image metrics; the reference row (null value, n = 0) gets NaN, not
    inf, and its own name as reference_row."""
    ci = lambda v: {"value": v, "ci_low": v - 1, "ci_high": v + 1, "n": 3, "reference": "b20"}  # noqa: E731
    none = {"value": None, "ci_low": None, "ci_high": None, "n": 0, "reference": "b20"}
    write_row(tmp_path, "b20", seconds=[1.0] * 3, blocks=280, metrics=dict(psnr_ref=none, ssim_ref=none))
    write_row(tmp_path, "ilf", seconds=[0.5] * 3, blocks=168, metrics=dict(psnr_ref=ci(31.5), ssim_ref=ci(0.9)))
    rows = [dict(name="b20", table=1, group="g", backbone="toy-t2i", steps=20, method="baseline"),
            dict(name="ilf", table=1, group="g", backbone="toy-t2i", steps=10, method="ilf")]
    df = summarize_rows(rows, tmp_path, "toy").set_index("row")
    cols = list(df.reset_index().columns)
    assert cols.index("psnr_ref") + 1 == cols.index("psnr_ref_ci_low") and "lpips_ref_ci_high" in cols
    assert df.loc["ilf", "psnr_ref"] == 31.5 and df.loc["ilf", "psnr_ref_ci_high"] == 32.5
    assert df.loc["ilf", "reference_row"] == "b20" and df.loc["b20", "reference_row"] == "b20"
    assert math.isnan(df.loc["b20", "psnr_ref"]) and df.loc["b20", "psnr_ref_n"] == 0
