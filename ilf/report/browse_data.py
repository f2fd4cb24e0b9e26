"""What the image browser shows, read from stored results only: for every table or figure group, every row's
image of each (prompt, seed) with that image's seconds, block forwards and metric values.

Rows of one backbone share prompts and per-image seeds (the generation record, docs/formats.md), so the images
with the same `prompt_id` and `seed` are the same prompt from the same noise in every row: the browser sets them
side by side. Per-image metrics
are every numeric column of `metrics.jsonl` that the generation record does not have, so a new metric shows without
code changes.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilf.io import read_jsonl
from ilf.report.common import LOWER_IS_BETTER, METRIC_LABELS, tag_title


@dataclass
class RowImages:
    """One row's images in index order: `items[i]` = {key, prompt, prompt_id, sample, image, seconds,
    block_forwards, metrics}; `image` is the path relative to the row's image folder `folder`."""

    name: str
    folder: Path
    items: list[dict[str, Any]]
    metric_names: list[str]
    summary_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class BrowseGroup:
    """A table or figure group: rows with one tag (table1, fig8, ...) and one `group` (backbone) of the config."""

    id: str
    title: str
    rows: tuple[str, ...]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def item_key(record: dict[str, Any]) -> str:
    """The pairing key of an image across rows: prompt and seed (as `ilf.report.paired.align` pairs)."""
    return f"{record.get('prompt_id')}|{record.get('seed')}"


def read_row_images(row: str, folder: Path) -> RowImages:
    """A row's generation records (the last per index) joined with its per-image metric records.

    Raises:
        FileNotFoundError: the folder has no generation records.
    """
    folder = Path(folder)
    records = {r.get("index"): r for r in read_jsonl(folder / "generation.jsonl")}
    if not records:
        raise FileNotFoundError(f"row {row!r}: no generation records in {folder / 'generation.jsonl'} "
                                "(run `ilf generate` for this row first)")
    scores = {r.get("index"): r for r in read_jsonl(folder / "metrics.jsonl")}
    names: dict[str, None] = {}
    items = []
    for index in sorted(records, key=lambda i: (i is None, i)):
        rec = records[index]
        per_image = {k: _number(v) for k, v in scores.get(index, {}).items() if k not in rec}
        per_image = {k: v for k, v in per_image.items() if v is not None}
        names.update(dict.fromkeys(per_image))
        prompt = rec.get("prompt") or rec.get("class_label")
        items.append({
            "key": item_key(rec), "prompt": str(prompt if prompt not in (None, "") else rec.get("prompt_id")),
            "prompt_id": rec.get("prompt_id"), "sample": rec.get("sample_index"),
            "image": str(rec.get("image_path") or f"images/{int(index):06d}.png"),
            "seconds": _number(rec.get("seconds_per_image")), "block_forwards": _number(rec.get("block_forwards_measured")),
            "metrics": per_image,
        })
    summary_path = folder / "metrics_summary.json"
    summary = json.loads(summary_path.read_text()).get("metrics", {}) if summary_path.is_file() else {}
    return RowImages(row, folder, items, list(names), summary or {})


def browse_groups(rows: list[dict[str, Any]]) -> list[BrowseGroup]:
    """One group per (tag, config group) in the order tables, figures, other tags, then every row of a config
    group (the Pareto figure's set); rows in config order."""
    from ilf.harness.workflow_config import row_tables

    by_tag: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        for tag in row_tables(row):
            by_tag.setdefault((tag, str(row.get("group"))), []).append(row["name"])
    for row in rows:
        by_tag.setdefault(("all", str(row.get("group"))), []).append(row["name"])

    def order(key: tuple[str, str]) -> tuple[int, str, str]:
        tag = key[0]
        kind = 0 if tag.startswith("table") else 1 if tag.startswith("fig") else 3 if tag == "all" else 2
        return kind, tag.rjust(12), key[1]

    out = []
    for tag, group in sorted(by_tag, key=order):
        title = "every row (Pareto figure)" if tag == "all" else tag_title(tag)
        out.append(BrowseGroup(f"{tag}/{group}", f"{title} \u00b7 {group}", tuple(by_tag[(tag, group)])))
    return out


def row_info(row: dict[str, Any], images: RowImages) -> dict[str, Any]:
    """The column heading of a row: label, method, steps, block forwards, median seconds, row-level metrics."""
    seconds = [i["seconds"] for i in images.items if i["seconds"] is not None]
    blocks = [i["block_forwards"] for i in images.items if i["block_forwards"] is not None]
    mean_blocks = sum(blocks) / len(blocks) if blocks else None
    return {
        "label": str(row.get("label", row["name"])), "method": row.get("method"), "steps": row.get("steps"),
        "block_forwards": (round(mean_blocks, 1) if mean_blocks is not None else row.get("block_forwards_analytic")),
        "seconds": statistics.median(seconds) if seconds else None, "images": len(images.items),
        "reference_row": row.get("reference_row"), "tables": row.get("table"),
        "metrics": {m: {k: v.get(k) for k in ("value", "ci_low", "ci_high", "n")}
                    for m, v in images.summary_metrics.items() if isinstance(v, dict)},
    }


def group_payload(group: BrowseGroup, images: dict[str, RowImages], image_url: dict[str, str]) -> dict[str, Any]:
    """A group's items (the union of its rows' (prompt, seed) keys, in first-seen order) and, per row, arrays
    aligned with the items: image URL, seconds, block forwards and every per-image metric (None where absent).

    Args:
        group: the group.
        images: row name -> its images.
        image_url: row name -> URL prefix of its image folder in the browser (relative to index.html).
    """
    items: dict[str, list[Any]] = {}
    for name in group.rows:
        for it in images[name].items:
            items.setdefault(it["key"], [it["key"], it["prompt"], it["sample"]])
    keys = list(items)
    metrics = list(dict.fromkeys(m for name in group.rows for m in images[name].metric_names))
    cells: dict[str, dict[str, Any]] = {}
    for name in group.rows:
        by_key = {it["key"]: it for it in images[name].items}
        got = [by_key.get(k) for k in keys]
        cells[name] = {
            "img": [f"{image_url[name]}/{it['image']}" if it else None for it in got],
            "sec": [it["seconds"] if it else None for it in got],
            "bf": [it["block_forwards"] if it else None for it in got],
            "m": {m: [it["metrics"].get(m) if it else None for it in got] for m in metrics},
        }
    return {"id": group.id, "rows": list(group.rows), "metrics": metrics, "items": list(items.values()),
            "cells": cells}


def metric_info(names: list[str]) -> dict[str, dict[str, str]]:
    """Display name and direction of every metric the browser shows."""
    return {m: {"label": METRIC_LABELS.get(m, m), "better": "lower" if m in LOWER_IS_BETTER else "higher"}
            for m in names}
