"""The paper's metrics with the field's libraries (issue [metrics], contract B).

ImageReward (`image-reward`), CLIP score (`open_clip_torch`), CLIP-IQA Good/Noisy/Colorful/Natural
(`pyiqa`), MJHQ-30K and ImageNet FID (`clean-fid`), plus lazy dispatch of the toy world's metrics.
`compute_row_metrics(row_dir, names)` is what `ilf metrics` runs. Heavy libraries are imported only
by the metric that needs them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ilf.metrics.registry import METRICS, MetricOptions, compute_metrics, parse_metric_names

__all__ = ["METRICS", "MetricOptions", "compute_row_metrics", "parse_metric_names"]


def compute_row_metrics(row_dir: str | Path, metrics: str | list[str],
                        opts: MetricOptions | None = None) -> dict[str, Any]:
    """Score one generation row; writes `metrics.jsonl` + `metrics_summary.json`, returns the summary."""
    import json

    from ilf.metrics.records import read_generation, row_name, write_metric_records, write_summary
    from ilf.provenance import provenance

    opts = opts or MetricOptions()
    row_dir = Path(row_dir)
    names = parse_metric_names(metrics)
    records = read_generation(row_dir)
    per_image, summary, models = compute_metrics(records, row_dir, names, opts)
    config = {"metrics": names, "clip_model": opts.clip_model, "fid_ref": opts.fid_ref, "fid_mode": opts.fid_mode,
              "bootstrap_seed": opts.seed}
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
