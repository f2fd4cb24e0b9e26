"""The metrics record of one generation row (docs/formats.md), readable with one line of pandas.

`<row_dir>/metrics.jsonl`: one record per image (row, index, prompt_id, seed, image_path, then one
column per per-image metric; a video row: one per clip, with clip_path); `<row_dir>/metrics_summary.json`:
`{"row", "metrics": {name: {value, ci_low, ci_high, n, reference}}, "provenance"}`.
Re-running with other metric names merges into existing files of the same row.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ilf.io import read_jsonl, write_json_atomic, write_text_atomic

BASE_COLUMNS = ("row", "index", "prompt_id", "seed", "image_path")
CLIP_COLUMNS = ("row", "index", "prompt_id", "seed", "clip_path")  # a video row: one record per clip


def read_generation(row_dir: Path) -> list[dict[str, Any]]:
    """The row's generation record, sorted by global index, after checking that every image (or clip)
    matches its record (ilf.harness.image_records.DamagedImageError, a ValueError naming the file, if not)."""
    from ilf.harness.image_records import check_images

    path = Path(row_dir) / "generation.jsonl"
    records = read_jsonl(path)
    if not records:
        raise FileNotFoundError(f"{path} is missing or empty: run `ilf generate` for this row first")
    records.sort(key=lambda r: r["index"])
    check_images(row_dir, records)
    return records


def row_name(records: list[dict[str, Any]], row_dir: Path) -> str:
    return str(records[0].get("row") or Path(row_dir).name)


def write_metric_records(row_dir: Path, records: list[dict[str, Any]], per_image: dict[str, np.ndarray]) -> Path:
    """Write (or merge into) `metrics.jsonl`, one line per generated image."""
    path = Path(row_dir) / "metrics.jsonl"
    old = {r["index"]: r for r in read_jsonl(path)}
    lines = []
    for i, rec in enumerate(records):
        out = dict(old.get(rec["index"], {}))
        out.update({k: rec.get(k) for k in (CLIP_COLUMNS if rec.get("clip_path") else BASE_COLUMNS)})
        out.update({name: (None if np.isnan(values[i]) else float(values[i])) for name, values in per_image.items()})
        lines.append(json.dumps(out, sort_keys=False))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_summary(row_dir: Path, row: str, metrics: dict[str, dict[str, Any]], provenance: dict[str, Any]) -> Path:
    """Write (or merge into) `metrics_summary.json`."""
    path = Path(row_dir) / "metrics_summary.json"
    merged: dict[str, Any] = {}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("row") == row:
            merged = dict(old.get("metrics", {}))
    merged.update(metrics)
    write_json_atomic(path, {"row": row, "metrics": merged, "provenance": provenance})
    return path
