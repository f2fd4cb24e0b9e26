"""Paired bootstrap differences (ilf.report.paired) on constructed examples with known answers."""
import json

import numpy as np
import pandas as pd
import pytest

from ilf.cli import main
from ilf.report.paired import align, bootstrap_fid, paired_difference, paired_table


def test_constant_difference_has_a_degenerate_interval():
    ref = np.linspace(0.0, 1.0, 50)
    assert paired_difference(ref + 0.25, ref) == pytest.approx((0.25, 0.25, 0.25))


def test_interval_matches_the_normal_approximation():
    # differences alternate 0 / 1: mean 0.5, sd 0.5, n = 400 -> 95% CI about 0.5 +- 1.96 * 0.025
    ref = np.zeros(400)
    row = np.tile([0.0, 1.0], 200)
    diff, lo, hi = paired_difference(row, ref, n_boot=4000, seed=1)
    assert diff == 0.5
    assert lo == pytest.approx(0.5 - 0.049, abs=0.008) and hi == pytest.approx(0.5 + 0.049, abs=0.008)
    assert paired_difference(row, ref, seed=3) == paired_difference(row, ref, seed=3)   # seeded


def test_pairing_is_what_narrows_the_interval():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, 200)                 # large per-image spread, tiny shift
    _, lo, hi = paired_difference(ref + 0.02, ref)
    assert lo == pytest.approx(0.02) and hi == pytest.approx(0.02)
    _, lo, hi = paired_difference(ref + 0.02, rng.permutation(ref))   # unpaired: the shift is not resolved
    assert lo < 0 < hi


def test_unpaired_rows_are_refused():
    a = pd.DataFrame({"index": [0, 1], "prompt_id": ["p0", "p1"], "seed": [1, 2], "m": [0.0, 1.0]}).set_index("index", drop=False)
    with pytest.raises(ValueError, match="share no image"):
        align(a, a.assign(seed=[5, 6]))
    with pytest.raises(ValueError, match="share no image"):
        align(a, a.assign(prompt_id=["p1", "p0"]))  # same seeds, other prompts: not the same noise and prompt
    with pytest.raises(ValueError, match="same \\(prompt_id, seed\\)"):
        align(a.assign(seed=[1, 1], prompt_id=["p0", "p0"]), a)
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_rows_with_different_samples_per_prompt_pair_on_their_common_images():
    """The default job's Fig. 8: a 60-digit row (6 per digit) against the 300-digit reference (30 per digit). Index
    i of the two rows is a different image (the old index join refused them); (prompt_id, seed) pairs the first 6
    samples of every digit."""
    from ilf.harness.generate import derive_seed

    def records(per_digit, value):
        out = []
        for d in range(10):
            for s in range(per_digit):
                out.append({"index": len(out), "prompt_id": f"digit{d}", "seed": derive_seed(0, "toy-digits", f"digit{d}", s),
                            "m": value(d, s)})
        return pd.DataFrame(out).set_index("index", drop=False)

    ref = records(30, lambda d, s: float(s % 2))            # per image: 0, 1, 0, 1, ...
    row = records(6, lambda d, s: float(s % 2) + 0.5)       # the same images' values + 0.5
    joined = align(row, ref, "row-60", "ref-300")
    assert len(joined) == 60 and list(joined["index"]) == list(range(60))
    assert (joined["m"] - joined["m__ref"] == 0.5).all()    # pairs the same (digit, sample), not the same index
    assert paired_difference(joined["m"], joined["m__ref"]) == pytest.approx((0.5, 0.5, 0.5))


def test_bootstrap_fid_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(40, 3))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    identity = np.arange(40)[None, :]
    assert bootstrap_fid(feats, mu, sigma, identity)[0] == pytest.approx(0.0, abs=1e-6)


def _write_row(root, row, values, seeds):
    d = root / "rows" / row
    d.mkdir(parents=True)
    with open(d / "metrics.jsonl", "w") as fh:
        for i, (v, s) in enumerate(zip(values, seeds)):
            fh.write(json.dumps({"row": row, "index": i, "prompt_id": f"p{i}", "seed": s, "toy_adherence": v}) + "\n")


def test_summary_table_and_command_line(tmp_path, capsys):
    seeds = list(range(100, 120))
    ref = [0.2, 0.4, 0.6, 0.8] * 5
    _write_row(tmp_path, "base", ref, seeds)
    _write_row(tmp_path, "better", [v + 0.2 for v in ref], seeds)
    _write_row(tmp_path, "other-backbone", ref, seeds)
    pd.DataFrame({"row": ["base", "better", "other-backbone"], "backbone": ["toy-t2i", "toy-t2i", "toy-c2i"]}).to_csv(
        tmp_path / "summary.csv", index=False)
    t = paired_table(tmp_path / "summary.csv", "base")
    assert list(t["row"]) == ["better"]                      # same backbone only, reference itself left out
    line = t.iloc[0]
    assert (line["metric"], line["n"]) == ("toy_adherence", 20)
    assert line["diff"] == pytest.approx(0.2) and line["diff_ci_low"] == pytest.approx(0.2)
    assert line["value"] == pytest.approx(0.7) and line["reference_value"] == pytest.approx(0.5)
    assert main(["paired", "--summary", str(tmp_path / "summary.csv"), "--reference", "base",
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert "better" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "p.csv")["diff"].iloc[0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not a row"):
        paired_table(tmp_path / "summary.csv", "missing")


def test_toy_features_of_a_row_with_a_damaged_image_name_the_file(tmp_path):
    """A recorded image cut short is refused with its name before the classifier reads it (and nothing cached)."""
    from ilf.harness.image_records import DamagedImageError
    from ilf.metrics.tiny import write_random_images
    from ilf.report.paired import row_features

    paths = write_random_images(tmp_path / "images", 3, size=32, seed=1)
    (tmp_path / "generation.jsonl").write_text("".join(
        json.dumps({"index": i, "image_path": f"images/{p.name}"}) + "\n" for i, p in enumerate(paths)))
    paths[1].write_bytes(paths[1].read_bytes()[:100])
    with pytest.raises(DamagedImageError, match=str(paths[1])):
        row_features(tmp_path, "t2i")
    assert not (tmp_path / "toy_features.npy").exists()


def test_default_metrics_include_fidelity_to_the_reference_row(tmp_path):
    """Without --metrics every per-image metric the rows hold is paired, the fidelity ones included."""
    seeds = list(range(8))
    for row, shift in (("base", 0.0), ("other", 1.5)):
        d = tmp_path / "rows" / row
        d.mkdir(parents=True)
        with open(d / "metrics.jsonl", "w") as fh:
            for i, s in enumerate(seeds):
                fh.write(json.dumps({"row": row, "index": i, "prompt_id": f"p{i}", "seed": s, "toy_adherence": 0.5,
                                     "psnr_ref": 30.0 + i + shift, "ssim_ref": 0.9, "lpips_ref": 0.1}) + "\n")
    pd.DataFrame({"row": ["base", "other"], "backbone": ["toy-t2i", "toy-t2i"]}).to_csv(tmp_path / "summary.csv",
                                                                                          index=False)
    t = paired_table(tmp_path / "summary.csv", "base").set_index("metric")
    assert {"toy_adherence", "psnr_ref", "ssim_ref", "lpips_ref"} <= set(t.index)
    assert t.loc["psnr_ref", "diff"] == pytest.approx(1.5) and t.loc["ssim_ref", "diff"] == pytest.approx(0.0)
