"""Names and small helpers shared by the row summary, the tables and the figures."""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import pandas as pd

# The paper's metrics in the order of its tables (Table 1: Image Reward, CLIP, MJHQ FID, CLIP-IQA x4; Table 2: FID).
PAPER_METRICS: tuple[str, ...] = (
    "image_reward", "clip_score", "fid_mjhq", "clipiqa_good", "clipiqa_noisy", "clipiqa_colorful",
    "clipiqa_natural", "fid_imagenet",
)
TOY_METRICS: tuple[str, ...] = ("toy_fid", "toy_adherence", "toy_class_accuracy", "toy_kid")
# Fidelity to the row's reference row (the same row as its speedups'), image by image; both worlds. The
# reference row itself has no value (identical images). Kept literal, as ilf.harness.reference names them.
FIDELITY_METRICS: tuple[str, ...] = ("psnr_ref", "ssim_ref", "lpips_ref")
# The metrics record's metric names, in the order of their column blocks in summary.csv.
METRICS: tuple[str, ...] = ("image_reward", "clip_score", "clipiqa_good", "clipiqa_noisy", "clipiqa_colorful",
                            "clipiqa_natural", "fid_mjhq", "fid_imagenet") + TOY_METRICS + FIDELITY_METRICS
LOWER_IS_BETTER: frozenset[str] = frozenset({"fid_mjhq", "fid_imagenet", "clipiqa_noisy", "toy_fid", "toy_kid",
                                             "lpips_ref"})
# ours, then the peer methods of ilf.peers.PEERS (kept literal: the report never imports the method's packages)
METHODS: tuple[str, ...] = ("baseline", "cache", "ilf", "dbcache", "fbcache", "magcache", "taylorseer", "pab", "fastercache")
WORLDS: tuple[str, ...] = ("toy", "paper")

# Human-readable names (LaTeX-safe) used in table headers and figure axes.
METRIC_LABELS: dict[str, str] = {
    "image_reward": "Image Reward", "clip_score": "CLIP", "fid_mjhq": "MJHQ FID", "clipiqa_good": "Good",
    "clipiqa_noisy": "Noisy", "clipiqa_colorful": "Colorful", "clipiqa_natural": "Natural",
    "fid_imagenet": "FID", "toy_fid": "toy FID", "toy_adherence": "toy adherence",
    "toy_class_accuracy": "toy class acc.", "toy_kid": "toy KID",
    "psnr_ref": "PSNR (dB)", "ssim_ref": "SSIM", "lpips_ref": "LPIPS",
}
# Metrics a figure or Pareto plot uses as "quality" when none is named: the paper's headline metrics first.
# Toy: digits' toy class accuracy (per image, ranks step counts as the toy study resolves them), then toy KID
# (unbiased, class-probability space); toy FID last: it ranks fewer steps as better on the toy (ilf/toy/kid.py).
QUALITY_PRIORITY: tuple[str, ...] = ("image_reward", "fid_imagenet", "fid_mjhq", "clip_score", "toy_class_accuracy",
                                     "toy_kid", "toy_adherence", "toy_fid")
# The fidelity panel beside it: PSNR first (the most reported, and the toy rows have it), then LPIPS, then SSIM.
FIDELITY_PRIORITY: tuple[str, ...] = ("psnr_ref", "lpips_ref", "ssim_ref")

SUMMARY_HEAD: tuple[str, ...] = (
    "row", "table", "group", "label", "backbone", "resolution", "method", "steps", "block_forwards_analytic",
    "block_forwards_measured", "seconds_per_image", "speedup_seconds", "speedup_blocks", "training_run",
    "training_iter", "t_post", "feedback_steps", "loop_start", "loop_end", "cache_location", "cache_num_blocks",
    "cache_interval",
)
SUMMARY_TAIL: tuple[str, ...] = ("seed", "config_hash", "git_commit", "versions", "device", "date", "world")
# Appended last, after the columns above: the paper row a row reproduces (key into
# configs/paper_numbers.csv), the row its speedups are relative to, and the cost in analytic FLOPs.
SUMMARY_EXTRA: tuple[str, ...] = ("paper_row", "reference_row", "flops_per_image", "speedup_flops")


def metric_columns(metrics: Iterable[str]) -> list[str]:
    """`M, M_ci_low, M_ci_high, M_n` for every metric name."""
    return [c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_n")]


def summary_columns(extra_metrics: Iterable[str] = ()) -> list[str]:
    """The column order of the row summary (`summary.csv`, `rows/<row>.csv`; docs/formats.md)."""
    extra = [m for m in extra_metrics if m not in METRICS]
    return [*SUMMARY_HEAD, *metric_columns([*METRICS, *extra]), *SUMMARY_TAIL, *SUMMARY_EXTRA]


def is_missing(value: Any) -> bool:
    """True for None, NaN, empty strings and pandas NA."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_float(value: Any) -> float:
    """A float, or NaN for anything missing or non-numeric."""
    if is_missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def split_keys(value: Any) -> list[str]:
    """'1,4' / '1;4' / [1, 4] / 1 -> ['1', '4']; empty for missing values."""
    if is_missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if not is_missing(v)]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return [p for p in re.split(r"[,;\s]+", str(value).strip()) if p]


def table_numbers(value: Any) -> set[int]:
    """Which paper tables a row belongs to: 1, '1', 'table1', 't1', '1,4', [1, 4] -> {1, 4}."""
    out = set()
    for key in split_keys(value):
        m = re.fullmatch(r"(?:table|tab|t)?(\d+)", key.lower())
        if m:
            out.add(int(m.group(1)))
    return out


def in_table(df: pd.DataFrame, k: int | str) -> pd.DataFrame:
    """The rows of a summary or paper-numbers frame that belong to table `k` (or to a tag like 'fig7')."""
    if "table" not in df.columns or df.empty:
        return df.iloc[0:0]
    if isinstance(k, int):
        mask = df["table"].map(lambda v: k in table_numbers(v))
    else:
        mask = df["table"].map(lambda v: k.lower() in [s.lower() for s in split_keys(v)])
    return df[mask.astype(bool)]


def better(metric: str) -> str:
    """'lower' or 'higher'."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def available_metrics(df: pd.DataFrame, candidates: Iterable[str]) -> list[str]:
    """The candidates that have at least one value in `df`."""
    return [m for m in candidates if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


def quality_metric(df: pd.DataFrame, preferred: str | None = None) -> str | None:
    """The metric a figure plots as quality: `preferred` if it has values, else the first of QUALITY_PRIORITY."""
    if preferred:
        return preferred if available_metrics(df, [preferred]) else None
    found = available_metrics(df, QUALITY_PRIORITY)
    return found[0] if found else None


def fidelity_metric(df: pd.DataFrame, preferred: str | None = None) -> str | None:
    """The fidelity metric a figure plots beside quality: `preferred` if it has values, else the first of
    FIDELITY_PRIORITY with values (None when the rows have none)."""
    found = available_metrics(df, [preferred] if preferred else FIDELITY_PRIORITY)
    return found[0] if found else None


def is_own_reference(row: Any) -> bool:
    """A row compared with itself (its `reference_row` is its own name): its fidelity metrics have no value."""
    ref, name = row.get("reference_row"), row.get("row")
    return not is_missing(ref) and ref == name


def is_toy(df: pd.DataFrame, world: str | None = None) -> bool:
    """A summary is from the toy world if told so, or if its `world` column says so."""
    if world is not None:
        return world == "toy"
    return "world" in df.columns and (df["world"].astype(str) == "toy").any()


def tag_title(tag: str) -> str:
    """A row tag as people read it: 'table1' -> 'Table 1', 'fig8' -> 'Fig. 8', 'extra' -> 'Extra rows'."""
    m = re.fullmatch(r"(table|fig)(\d+)", str(tag).lower())
    if m:
        return f"{'Table' if m.group(1) == 'table' else 'Fig.'} {m.group(2)}"
    return "Extra rows" if tag == "extra" else str(tag)
