"""The metrics of a video row, per clip: CLIP score and the reference metrics, per frame and averaged per clip.

A video row's generation records name clips (`clip_path`, `ilf.harness.clip_records`). Each metric is computed
on every frame and a clip's value is the mean over its frames:

- `clip_score`: `ilf.metrics.clip_score` of each frame against the clip's prompt (the same open_clip model and
  formula as for images);
- `psnr_ref`, `ssim_ref`, `lpips_ref`: `ilf.metrics.fidelity.clip_fidelity`, frame k against frame k of the
  reference row's clip of the same prompt and seed.
The row's summary is the mean over clips with a 95% bootstrap interval over clips (`n` = clips). Image metrics
(ImageReward, CLIP-IQA, FID) are not defined on clips here and are refused by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ilf.harness.clip_records import VIDEO_METRICS, clip_frames

if TYPE_CHECKING:
    from ilf.metrics.fidelity import ReferenceRow
    from ilf.metrics.registry import MetricOptions


def per_clip_means(values: np.ndarray, counts: list[int]) -> np.ndarray:
    """The mean of each clip's consecutive run of per-frame `values` (`counts` frames per clip)."""
    return np.array([v.mean() for v in np.split(np.asarray(values, dtype=np.float64), np.cumsum(counts)[:-1])])


def compute_clip_metrics(records: list[dict[str, Any]], row_dir: Path, names: list[str], opts: "MetricOptions",
                         reference: "ReferenceRow | None" = None,
                         ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], dict[str, str]]:
    """(per-clip values, summaries, models used) of `names` over one video row's generation records.

    Args:
        records: the row's generation records (each with `clip_path`), already checked against its clips.
        row_dir: the row folder.
        names: metric names among `VIDEO_METRICS`.
        opts: the metric options (`clip_model`, `device`, `batch_size`, `cache_dir`, `seed`, `inject`).
        reference: the reference row of the `*_ref` metrics (its own folder: they get no value).

    Returns:
        As `ilf.metrics.registry.compute_metrics`, one value per clip.

    Raises:
        ValueError: a metric is not one of `VIDEO_METRICS`, a clip has no prompt (CLIP score) or no reference
            clip of the same prompt and seed, or the reference row is not given.
    """
    from ilf.metrics.registry import _field, mean_summary, reference_metric_model

    row = str(records[0].get("row") or row_dir.name)
    other = [n for n in names if n not in VIDEO_METRICS]
    if other:
        raise ValueError(f"metric {other[0]} scores images, and row {row!r} holds video clips: its metrics are "
                         f"{', '.join(VIDEO_METRICS)} (per frame, averaged per clip)")
    clips = [row_dir / r["clip_path"] for r in records]
    per_clip: dict[str, np.ndarray] = {}
    summary: dict[str, dict[str, Any]] = {}
    models: dict[str, str] = {}
    common = dict(device=opts.device, batch_size=opts.batch_size, cache_dir=opts.cache_dir)
    if "clip_score" in names:
        from ilf.metrics.clip_score import clip_score

        frames = [clip_frames(c) for c in clips]
        captions = [p for p, f in zip(_field(records, "prompt", "clip_score"), frames) for _ in f]
        _, scores = clip_score([p for f in frames for p in f], captions, opts.clip_model, **common,
                               **opts.inject.get("clip_score", {}))
        per_clip["clip_score"] = per_clip_means(scores, [len(f) for f in frames])
        models["clip_score"] = f"open_clip:{opts.clip_model} (per frame, mean per clip)"
    ref_names = [n for n in names if n in VIDEO_METRICS[1:]]
    if ref_names:
        from ilf.metrics.fidelity import clip_fidelity, pair_with_reference

        if reference is None:
            raise ValueError(f"{ref_names[0]} compares every clip with its reference row's clip of the same prompt "
                             f"and seed: name the reference's folder (`ilf metrics --reference-dir DIR`)")
        own = reference.row_dir.resolve() == row_dir.resolve()  # the reference itself: identical clips, no value
        values = None if own else clip_fidelity(clips, pair_with_reference(records, reference, row), ref_names,
                                                **common, **opts.inject.get("fidelity", {}))
        for name in ref_names:
            if values is None:
                per_clip[name] = np.full(len(records), np.nan)
                summary[name] = {"value": None, "ci_low": None, "ci_high": None, "n": 0, "reference": None}
            else:
                per_clip[name] = values[name]
            models[name] = reference_metric_model(name) + " (per frame, mean per clip)"
    for name, values in per_clip.items():
        if name not in summary:
            summary[name] = mean_summary(values, opts.seed)
        if name in ref_names:
            summary[name]["reference"] = reference.name
    return per_clip, {n: summary[n] for n in names}, models
