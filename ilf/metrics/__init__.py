"""The paper's metrics with the field's libraries, written as the metrics record (docs/formats.md).

ImageReward (`image-reward`), CLIP score (`open_clip_torch`), CLIP-IQA Good/Noisy/Colorful/Natural
(`pyiqa`), MJHQ-30K and ImageNet FID (`clean-fid`), fidelity to a reference row (PSNR, SSIM from
`torchmetrics`, LPIPS from `lpips`), plus lazy dispatch of the toy world's metrics.
`compute_row_metrics(row_dir, names)` is what `ilf metrics` runs. Heavy libraries are imported only
by the metric that needs them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ilf.metrics.registry import METRICS, MetricOptions, compute_metrics, parse_metric_names

if TYPE_CHECKING:
    from ilf.metrics.fidelity import ReferenceRow

__all__ = ["METRICS", "MetricOptions", "compute_row_metrics", "parse_metric_names", "reference_row"]


# The paper scores each metric on its own prompt set (Sec. 4.1): ImageReward and CLIP-IQA on the ImageReward
# benchmark prompts, CLIP score and MJHQ FID on MJHQ-30K prompts. A row folder may hold images of several sets.
METRIC_PROMPT_SETS = {"image_reward": "imagereward-benchmark", "clipiqa_good": "imagereward-benchmark",
                      "clipiqa_noisy": "imagereward-benchmark", "clipiqa_colorful": "imagereward-benchmark",
                      "clipiqa_natural": "imagereward-benchmark", "clip_score": "mjhq-30k", "fid_mjhq": "mjhq-30k"}


def group_by_prompt_set(names: list[str], records: list[dict[str, Any]]) -> dict[str | None, list[str]]:
    """Metric names grouped by the prompt set whose images they score (None: every image of the row)."""
    present = {r.get("prompt_set") for r in records} - {None}
    groups: dict[str | None, list[str]] = {}
    for name in names:
        want = METRIC_PROMPT_SETS.get(name)
        key = want if (want is not None and len(present) > 1) else None
        if key is not None and key not in present:
            raise ValueError(f"metric {name!r} scores images of prompt set {key!r}, but this row has {sorted(present)}")
        groups.setdefault(key, []).append(name)
    return groups


def reference_row(reference_dir: str | Path) -> "ReferenceRow":
    """The row stored in `reference_dir` (its generation records), for the `*_ref` metrics."""
    from ilf.metrics.fidelity import ReferenceRow
    from ilf.metrics.records import read_generation, row_name

    records = read_generation(Path(reference_dir))
    return ReferenceRow(row_name(records, Path(reference_dir)), Path(reference_dir), records)


def compute_row_metrics(row_dir: str | Path, metrics: str | list[str], opts: MetricOptions | None = None,
                        records: list[dict[str, Any]] | None = None,
                        reference_dir: str | Path | None = None,
                        reference: "ReferenceRow | None" = None) -> dict[str, Any]:
    """Score one generation row; writes `metrics.jsonl` + `metrics_summary.json`, returns the summary.

    Args:
        row_dir: the row folder (`generation.jsonl` and `images/`).
        metrics: metric names, a list or comma-separated.
        opts: metric options (default `MetricOptions()`).
        records: the row's generation records as `ilf.metrics.records.read_generation` returns them (already
            checked); default: read and checked here.
        reference_dir: the folder of the row the `*_ref` metrics compare with (needed only for them).
        reference: that row already read (`reference_row`), instead of `reference_dir`: several rows scored in one
            process read their shared reference once.

    Returns:
        The row's `metrics_summary.json` content.

    Raises:
        FileNotFoundError: the row has no generation records.
        ValueError: a metric name is unknown, or an image is missing or does not match its record
            (`ilf.harness.image_records.DamagedImageError`), or a reference image is missing.
    """
    import json

    from ilf.metrics.records import read_generation, row_name, write_metric_records, write_summary
    from ilf.harness.provenance import provenance

    opts = opts or MetricOptions()
    row_dir = Path(row_dir)
    names = parse_metric_names(metrics)
    records = read_generation(row_dir) if records is None else records
    if reference is None and reference_dir is not None:
        reference = reference_row(reference_dir)
    per_image, summary, models = {}, {}, {}
    for prompt_set, group in group_by_prompt_set(names, records).items():
        idx = [i for i, r in enumerate(records) if prompt_set is None or r.get("prompt_set") == prompt_set]
        pi, sm, md = compute_metrics([records[i] for i in idx], row_dir, group, opts, reference)
        for name, values in pi.items():  # images of another prompt set get no value for this metric
            full = np.full(len(records), np.nan)
            full[idx] = values
            per_image[name] = full
        summary.update(sm)
        models.update(md)
    config = {"metrics": names, "clip_model": opts.clip_model, "fid_ref": opts.fid_ref, "fid_mode": opts.fid_mode,
              "bootstrap_seed": opts.seed, "reference_row": reference.name if reference is not None else None}
    old_path = row_dir / "metrics_summary.json"
    old = json.loads(old_path.read_text()).get("provenance", {}) if old_path.exists() else {}
    prov = provenance(config, opts.device,
                      generation_config_hash=records[0].get("config_hash"),
                      metric_models={**old.get("metric_models", {}), **models},
                      reference_stats={**old.get("reference_stats", {}),
                                       **{n: s["reference"] for n, s in summary.items() if s["reference"]}},
                      num_images=len(records))
    write_metric_records(row_dir, records, per_image)
    write_summary(row_dir, row_name(records, row_dir), summary, prov)
    return json.loads(old_path.read_text())
