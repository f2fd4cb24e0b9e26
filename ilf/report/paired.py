"""Paired per-image comparisons of table rows against a reference row, with seeded bootstrap CIs.

Rows of one backbone share prompts and per-image seeds (the generation record's seed depends on the prompt and
sample index, not on the row), so two images with the same (prompt_id, seed) start from the same noise for
the same prompt, in any two rows (also rows with different numbers of samples per prompt: `n` is the images
they share). The difference row - reference is therefore computed image by image and its mean is
bootstrapped over images (a paired bootstrap; far tighter than comparing two independent CIs).

- per-image metrics (`toy_adherence`, `toy_class_accuracy`, ...): mean of per-image differences;
- `toy_fid` (a set-level toy metric): optional (`--toy-fid`); the toy-classifier features of every
  image are computed once (kept as `<row_dir>/toy_features.npy`, so the table can be rebuilt after the
  images are deleted) and FID is bootstrapped by resampling images, with the same resampled indices for
  the row and its reference when differences are taken. Resampling with replacement repeats images and
  inflates FID (small-n bias), so the bootstrapped FID intervals sit above the point value; the paired
  difference is less affected (the bias is similar for both rows).

    ilf paired --summary results/toy_study/summary.csv --reference t1_toy-t2i_baseline-20
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..harness.image_records import check_images
from ..io import atomic_path, read_jsonl
from ..metrics.bootstrap import ALPHA, N_BOOT, bootstrap_ci
PER_IMAGE = ("toy_adherence", "toy_class_accuracy", "image_reward", "clip_score", "clipiqa_good", "clipiqa_noisy",
             "clipiqa_colorful", "clipiqa_natural", "psnr_ref", "ssim_ref", "lpips_ref")
TOY_TASKS = {"toy-t2i": "t2i", "toy-c2i": "c2i", "toy-flux": "t2i"}


def paired_difference(values: Sequence[float], reference: Sequence[float], n_boot: int = N_BOOT,
                      alpha: float = ALPHA, seed: int = 0) -> tuple[float, float, float]:
    """(mean of values - reference, ci_low, ci_high): percentile bootstrap over paired items (same index)."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference needs two non-empty 1-d arrays of equal length, got {a.shape}, {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)  # the same seeded percentile bootstrap
    return float(d.mean()), lo, hi


def load_row_metrics(row_dir: str | Path) -> pd.DataFrame:
    """A row's `metrics.jsonl` (its metrics record) as a DataFrame indexed by image index."""
    path = Path(row_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-image metrics (run `ilf metrics --generation-dir {row_dir}`)")
    df = pd.DataFrame(read_jsonl(path))
    return df.sort_values("index").set_index("index", drop=False)


def align(row: pd.DataFrame, ref: pd.DataFrame, row_name: str = "row", ref_name: str = "reference") -> pd.DataFrame:
    """Inner join of two rows' per-image records on (prompt_id, seed): the images the two rows have in common.

    A seed is derived from (prompt set, prompt, sample index) (the generation record), so a row with 6 samples per digit
    shares its images' noise with the first 6 of a row with 30 per digit although their image indices differ.
    Raises ValueError when the rows share no image (different prompt sets or seeds) or a key repeats."""
    keys = ["prompt_id", "seed"]
    for name, df in ((row_name, row), (ref_name, ref)):
        missing = [k for k in keys if k not in df]
        if missing:
            raise ValueError(f"{name}: per-image records without {missing}: cannot pair images")
        if df.duplicated(keys).any():
            raise ValueError(f"{name}: two images with the same (prompt_id, seed): not one image per seed")
    a = row.assign(_key=row["prompt_id"].astype(str) + "|" + row["seed"].astype(str))
    b = ref.assign(_key=ref["prompt_id"].astype(str) + "|" + ref["seed"].astype(str))
    joined = pd.merge(a, b, on="_key", suffixes=("", "__ref")).drop(columns="_key")
    if joined.empty:
        raise ValueError(f"{row_name} and {ref_name} share no image (same prompt_id and seed): not a paired "
                         f"comparison (different prompt sets or seeds)")
    return joined.set_index("index", drop=False).sort_index()


def bootstrap_fid(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Frechet distance of the feature rows `feats[i]` for every bootstrap index row `i` of `idx` (n_boot, n)."""
    from cleanfid.fid import frechet_distance

    return np.array([frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu_ref, sigma_ref)
                     for f in (feats[i] for i in idx)])


def row_features(row_dir: Path, task: str) -> np.ndarray | None:
    """Toy-classifier features of a row's images, cached as `toy_features.npy`; None if neither exists."""
    cached = row_dir / "toy_features.npy"
    if cached.is_file():
        return np.load(cached, allow_pickle=False)
    records = sorted(read_jsonl(row_dir / "generation.jsonl"), key=lambda r: r["index"])
    paths = [row_dir / r["image_path"] for r in records]
    if not paths or not all(p.is_file() for p in paths):
        return None
    check_images(row_dir, records)  # a damaged image is named, not fed to the classifier
    from ..toy.metrics import toy_features

    feats = toy_features(paths, task)
    with atomic_path(cached) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, feats, allow_pickle=False)
    return feats


def paired_table(summary: str | Path, reference: str, metrics: Sequence[str] | None = None, toy_fid: bool = False,
                 n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One line per (row, metric): row mean, reference mean, paired difference and its 95% bootstrap CI, for
    every row of the reference's backbone in `summary.csv` (row folders: `<summary dir>/rows/<row>/`)."""
    summary = Path(summary)
    from .summarize import read_summary

    df = read_summary(summary)
    if reference not in set(df["row"]):
        raise ValueError(f"--reference {reference!r} is not a row of {summary}; rows: {sorted(df['row'])}")
    backbone = df.loc[df["row"] == reference, "backbone"].iloc[0]
    rows = df[df["backbone"] == backbone]
    rows_dir = summary.parent / "rows"
    ref = load_row_metrics(rows_dir / reference)
    metrics = list(metrics) if metrics else [m for m in PER_IMAGE if m in ref]
    out = []
    for _, r in rows.iterrows():
        if r["row"] == reference:
            continue
        joined = align(load_row_metrics(rows_dir / r["row"]), ref, r["row"], reference)
        for m in metrics:
            if m not in joined or f"{m}__ref" not in joined:
                continue
            diff, lo, hi = paired_difference(joined[m], joined[f"{m}__ref"], n_boot=n_boot, seed=seed)
            out.append({"row": r["row"], "reference": reference, "metric": m, "n": len(joined),
                        "value": joined[m].mean(), "reference_value": joined[f"{m}__ref"].mean(),
                        "diff": diff, "diff_ci_low": lo, "diff_ci_high": hi})
    if toy_fid and backbone in TOY_TASKS:
        out += _toy_fid_lines(rows, rows_dir, reference, TOY_TASKS[backbone], n_boot, seed)
    return pd.DataFrame(out)


def _toy_fid_lines(rows: pd.DataFrame, rows_dir: Path, reference: str, task: str, n_boot: int,
                   seed: int) -> list[dict]:
    """Toy FID per row with a bootstrap CI over images, and the paired (same resampled images) difference."""
    from cleanfid.fid import frechet_distance

    from ..toy.metrics import load_reference_stats

    mu, sigma, _ = load_reference_stats(task)
    feats = {r: row_features(rows_dir / r, task) for r in rows["row"]}
    ref_feats = feats[reference]
    if ref_feats is None:
        print(f"toy_fid: no images or toy_features.npy for {reference}; skipped", file=sys.stderr)
        return []
    idx = np.random.default_rng(seed).integers(0, len(ref_feats), size=(n_boot, len(ref_feats)))
    ref_boot = bootstrap_fid(ref_feats, mu, sigma, idx)
    ref_value = frechet_distance(ref_feats.mean(0), np.cov(ref_feats, rowvar=False), mu, sigma)
    out = []
    for r, f in feats.items():
        if f is None or len(f) != len(ref_feats):
            continue
        boot = ref_boot if r == reference else bootstrap_fid(f, mu, sigma, idx)
        value = frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, sigma)
        lo, hi = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2])
        dlo, dhi = np.quantile(boot - ref_boot, [ALPHA / 2, 1 - ALPHA / 2])
        out.append({"row": r, "reference": reference, "metric": "toy_fid", "n": len(f), "value": value,
                    "value_ci_low": lo, "value_ci_high": hi, "reference_value": ref_value,
                    "diff": value - ref_value, "diff_ci_low": dlo, "diff_ci_high": dhi})
    return out

