"""Prompt sets of the paper's metrics, read from the ILF cache (fetched by `ilf prefetch`).

- `imagereward_prompts()`: the 100 prompts of THUDM/ImageReward `benchmark/benchmark-prompts.json`
  (pinned commit), `[{"id", "prompt"}]`; ImageReward and CLIP-IQA score images made from them
  (10 per prompt, the official procedure).
- `mjhq_prompts()`: MJHQ-30K's `meta_data.json` prompts, `[{"id", "prompt", "category"}]` in a fixed
  order (sorted by id), optionally a seeded random subset; CLIP score and MJHQ FID use them.
- `drawbench_prompts()`: the 200 DrawBench prompts (Imagen, Saharia et al. 2022) from the Imagen team's sheet
  as CSV (`Prompts`, `Category` columns), `[{"id", "prompt", "category"}]` in the file's order, id
  `drawbench-NNN` = position; the fetch records the URL, date and sha256 beside the file.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from ilf.metrics.assets import require_asset

PROMPT_SETS = ("imagereward", "mjhq30k", "drawbench")
DRAWBENCH_COLUMNS = ("Prompts", "Category")


def imagereward_prompts(cache_dir: Path | None = None) -> list[dict[str, str]]:
    """The 100 ImageReward benchmark prompts, in the file's order."""
    data = json.loads(require_asset("imagereward-prompts", cache_dir).read_text())
    if not isinstance(data, list) or not all(isinstance(d, dict) and {"id", "prompt"} <= set(d) for d in data):
        raise ValueError("imagereward-prompts: expected a JSON list of {'id', 'prompt'} objects")
    return [{"id": str(d["id"]), "prompt": str(d["prompt"])} for d in data]


def mjhq_prompts(cache_dir: Path | None = None, num: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """MJHQ-30K prompts sorted by image id; `num` draws a seeded random subset (kept in id order)."""
    meta = json.loads(require_asset("mjhq30k-meta", cache_dir).read_text())
    rows = [{"id": k, "prompt": v["prompt"], "category": v.get("category", "")} for k, v in sorted(meta.items())]
    if num is not None and num < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), num))
        rows = [rows[i] for i in keep]
    return rows


def drawbench_prompts(cache_dir: Path | None = None) -> list[dict[str, str]]:
    """The DrawBench prompts in the file's order (rows without a prompt are skipped).

    Args:
        cache_dir: The ILF cache (default: `$ILF_CACHE`).

    Returns:
        `[{"id": "drawbench-000", "prompt": ..., "category": ...}, ...]`.

    Raises:
        MissingAssetError: the file is not in the cache (`ilf prefetch --metric-assets drawbench-prompts`).
        ValueError: the file lacks the `Prompts` / `Category` columns.
    """
    path = require_asset("drawbench-prompts", cache_dir)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = {str(f).strip().lower(): f for f in reader.fieldnames or []}  # the sheet's header, any case
        missing = [c for c in DRAWBENCH_COLUMNS if c.lower() not in names]
        if missing:
            raise ValueError(f"{path}: not the DrawBench CSV (no column {missing[0]!r}; columns: {reader.fieldnames})")
        pc, cc = (names[c.lower()] for c in DRAWBENCH_COLUMNS)
        rows = [(r[pc].strip(), (r[cc] or "").strip()) for r in reader if (r[pc] or "").strip()]
    return [{"id": f"drawbench-{i:03d}", "prompt": p, "category": c} for i, (p, c) in enumerate(rows)]


def load_prompt_set(name: str, cache_dir: Path | None = None, num: int | None = None,
                    seed: int = 0) -> list[dict[str, str]]:
    """A prompt set by name (`imagereward`, `mjhq30k` or `drawbench`)."""
    if name in ("imagereward", "drawbench"):
        rows = imagereward_prompts(cache_dir) if name == "imagereward" else drawbench_prompts(cache_dir)
        return rows if num is None else rows[:num]
    if name == "mjhq30k":
        return mjhq_prompts(cache_dir, num, seed)
    from ilf.errors import ILFConfigError

    raise ILFConfigError("prompts", name, PROMPT_SETS)
