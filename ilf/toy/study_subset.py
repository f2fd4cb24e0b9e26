"""A small fixed image set re-made from the toy study's stored records, for checking toy metrics.

The toy study (`results/toy_study/`) keeps per-image records (`rows/<row>/metrics.jsonl`: index, class, seed)
but not its images. `make_study_subset` regenerates the first `per_class` images of every digit class for
baseline rows, exactly as `ilf generate` made them (stock DiTPipeline with the shipped toy-c2i backbone,
DPM-Solver++, one `torch.Generator(seed)` per image, the row's steps and guidance from the study's resolved
`workflow_config.json`), and stores them as one compressed `.npz` of uint8 (N, 32, 32, 3) arrays per row with
the records' index, class and seed:

    ilf toy study-subset --out results/toy_study/kid_check_images.npz --per-class 20 \
        --rows c2i_b20,c2i_b10,c2i_b6,c2i_b5
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ilf.io import atomic_path, read_jsonl

STUDY_DIR = Path("results/toy_study")
ROWS = ("c2i_b20", "c2i_b10", "c2i_b6", "c2i_b5")


def study_records(study_dir: Path, row: str, per_class: int) -> list[dict]:
    """The first `per_class` records of every class of `row`, in index order."""
    seen: dict[str, int] = {}
    out = []
    for rec in sorted(read_jsonl(study_dir / "rows" / row / "metrics.jsonl"), key=lambda r: r["index"]):
        if seen.get(rec["prompt_id"], 0) < per_class:
            seen[rec["prompt_id"]] = seen.get(rec["prompt_id"], 0) + 1
            out.append(rec)
    return out


@torch.no_grad()
def make_study_subset(out: Path, rows: Sequence[str] = ROWS, per_class: int = 20, study_dir: Path = STUDY_DIR,
                      batch_size: int = 100) -> Path:
    """Regenerate the subset of every baseline row in `rows`; returns `out`."""
    from ilf.toy.pipelines import load_toy_pipeline

    config = json.loads((study_dir / "workflow_config.json").read_text())
    by_name = {r["name"]: r for r in config["rows"]}
    for row in rows:  # every row checked before the pipeline loads
        if row not in by_name:
            raise ValueError(f"row {row} is not a row of {study_dir / 'workflow_config.json'}; rows: {sorted(by_name)}")
        if by_name[row]["method"] != "baseline":
            raise ValueError(f"row {row} is a {by_name[row]['method']} row: only baseline rows are regenerated")
    pipe = load_toy_pipeline("c2i")
    arrays: dict[str, np.ndarray] = {}
    for row in rows:
        spec = by_name[row]
        recs = study_records(study_dir, row, per_class)
        labels = [int(r["prompt_id"].removeprefix("digit")) for r in recs]
        images = []
        for i in range(0, len(recs), batch_size):
            part = recs[i:i + batch_size]
            gens = [torch.Generator("cpu").manual_seed(int(r["seed"])) for r in part]
            images.append(pipe(class_labels=labels[i:i + batch_size], num_inference_steps=spec["steps"],
                               guidance_scale=spec["guidance_scale"], generator=gens, output_type="np").images)
        arrays[row] = (np.concatenate(images) * 255).round().astype(np.uint8)
        arrays[f"{row}__index"] = np.array([r["index"] for r in recs], dtype=np.int64)
        arrays[f"{row}__class"] = np.array(labels, dtype=np.int64)
        arrays[f"{row}__seed"] = np.array([int(r["seed"]) for r in recs], dtype=np.uint64)
        arrays[f"{row}__toy_class_accuracy"] = np.array([r["toy_class_accuracy"] for r in recs], dtype=np.float64)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out

