"""Builders of stored results (generation and metrics records) for the report tests; no models run here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ilf.io import append_jsonl, write_json_atomic

PROV = dict(config_hash="abc123", git_commit="deadbeef", versions='{"torch": "x"}', date="2025-01-01T00:00:00+00:00")


def write_row(out_dir: Path, name: str, *, seconds: list[float], blocks: int, measured: int | None = None,
              metrics: dict | None = None, analytic=None, images: bool = False, seed: int = 0,
              flops: float | None = None) -> Path:
    """Write `<out_dir>/rows/<name>/generation.jsonl` (+ metrics_summary.json, + PNGs); `flops`: every record's
    `flops_per_image` (None: records without it, as written before FLOPs were recorded)."""
    rdir = Path(out_dir) / "rows" / name
    for i, s in enumerate(seconds):
        rec = dict(row=name, index=i, prompt_id=i, prompt=f"p{i}", class_label=None, sample_index=0, seed=seed + i,
                   image_path=f"images/{i:06d}.png", seconds_per_image=s,
                   block_forwards_measured=blocks if measured is None else measured,
                   block_forwards_analytic=blocks if analytic is None else analytic,
                   device="cpu (x86_64)", dtype="float32", **PROV)
        if flops is not None:
            rec["flops_per_image"] = flops
        append_jsonl(rdir / "generation.jsonl", rec)
        if images:
            (rdir / "images").mkdir(parents=True, exist_ok=True)
            arr = np.full((16, 16, 3), (37 * i + blocks) % 256, dtype=np.uint8)
            Image.fromarray(arr).save(rdir / "images" / f"{i:06d}.png")
    if metrics is not None:
        body = {m: (v if isinstance(v, dict) else {"value": v, "ci_low": None, "ci_high": None, "n": len(seconds),
                                                   "reference": None}) for m, v in metrics.items()}
        write_json_atomic(rdir / "metrics_summary.json", {"row": name, "metrics": body, "provenance": PROV})
    return rdir


def paper_like_rows() -> list[dict]:
    """Config rows for Table 1 (one group) + Table 4 + Table 2 (with paired references)."""
    g = "pixart-alpha-512"
    return [
        dict(name="a512-b20", table="1,4", group=g, label="PixArt-alpha", backbone=g, steps=20, method="baseline",
             paper_row="t1/pixart-alpha-512/baseline-20;t4/pixart-alpha-512/baseline-20"),
        dict(name="a512-b12", table=1, group=g, label="PixArt-alpha", backbone=g, steps=12, method="baseline",
             paper_row="t1/pixart-alpha-512/baseline-12"),
        dict(name="a512-cache", table=1, group=g, label="PixArt-alpha w/ cache", backbone=g, steps=20, method="cache",
             cache=dict(location="inner", num_cached=18, interval=3), paper_row="t1/pixart-alpha-512/cache"),
        dict(name="a512-ilf", table=1, group=g, label="PixArt-alpha w/ ours", backbone=g, steps=10, method="ilf",
             feedback=dict(training="alpha512", iteration=5000, feedback_steps=[0, 1, 8, 9], t_post="rescale",
                           loop_start=8, loop_end=19), paper_row="t1/pixart-alpha-512/ilf"),
        dict(name="dit-b12", table=2, group="dit-xl-2-256", label="DiT", backbone="dit-xl-2-256", steps=12,
             method="baseline", paper_row="t2/dit-xl-2-256/baseline-12"),
        dict(name="dit-ilf10", table=2, group="dit-xl-2-256", label="DiT w/ ours", backbone="dit-xl-2-256", steps=10,
             method="ilf", reference_row="dit-b12", feedback=dict(training="dit", iteration=5000, feedback_steps="all",
                                                                  t_post="rescale"),
             paper_row="t2/dit-xl-2-256/ilf-10"),
    ]


def write_paper_like_results(out_dir: Path, images: bool = False) -> list[dict]:
    """Stored results for `paper_like_rows()` with hand-picked metric values (ILF best efficient IR)."""
    rows = paper_like_rows()
    write_row(out_dir, "a512-b20", seconds=[1.0, 1.2, 1.1], blocks=560, images=images, flops=5.6e13,
              metrics=dict(image_reward=92.0, clip_score=29.06, fid_mjhq=7.13))
    write_row(out_dir, "a512-b12", seconds=[0.6, 0.7, 0.65], blocks=336, images=images,
              metrics=dict(image_reward=88.4, clip_score=29.02, fid_mjhq=7.86))
    write_row(out_dir, "a512-cache", seconds=[0.55, 0.6, 0.58], blocks=326, images=images,
              metrics=dict(image_reward=82.9, clip_score=28.93, fid_mjhq=6.56))
    write_row(out_dir, "a512-ilf", seconds=[0.6, 0.55, 0.59], blocks=332, images=images, flops=3.5e13,
              metrics=dict(image_reward={"value": 89.5, "ci_low": 88.0, "ci_high": 91.0, "n": 3, "reference": None},
                           clip_score=29.11, fid_mjhq=7.2))
    write_row(out_dir, "dit-b12", seconds=[0.14, 0.14], blocks=336, metrics=dict(fid_imagenet=4.5))
    write_row(out_dir, "dit-ilf10", seconds=[0.13, 0.13], blocks=304, metrics=dict(fid_imagenet=4.06))
    return rows


def tex_tabular_shape(tex: str) -> tuple[int, int, list[list[str]]]:
    """(number of columns from the column spec, number of body rows, body cells) of the first tabular."""
    assert tex.count("{") == tex.count("}"), "unbalanced braces"
    assert tex.count(r"\begin{tabular}") == 1 and tex.count(r"\end{tabular}") == 1
    spec = tex.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0]
    ncols = len(spec)
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    lines = [ln.strip() for ln in body.splitlines() if ln.strip() and ln.strip() != r"\midrule"]
    rows = []
    for ln in lines:
        assert ln.endswith(r"\\"), ln
        cells = [c.strip() for c in ln[:-2].split(" & ")]
        assert len(cells) == ncols, (len(cells), ncols, ln)
        rows.append(cells)
    return ncols, len(rows), rows


def json_dump(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj))
