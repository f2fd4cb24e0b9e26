"""A small finished toy-world run for the browser and report tests: a workflow config (two backbones, a baseline,
a cache, an ILF row, a row sharing another's images) and its stored results (generation records, PNGs, per-image
metric records with a metric no code names, metric summaries). No model runs here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ilf.harness.workflow_config import REPO_ROOT, load_workflow_config
from ilf.io import write_json_atomic

IMAGES = {"c2i_b20": 45, "c2i_b5": 45, "c2i_cache": 45, "c2i_ilf": 30, "t2i_b20": 6, "t2i_ilf": 6}
PROMPTS = {"toy-c2i": 10, "toy-t2i": 6}  # digits 0-9 (45 images: several samples per digit), captions
REFERENCES = ("c2i_b20", "t2i_b20")  # no psnr_ref of their own: the other rows' images are compared with theirs


def fixture_config(out_dir: Path) -> dict:
    """A toy workflow config (YAML-ready) with its results in `out_dir`."""
    c2i = dict(backbone="toy-c2i", prompts="toy-digits", metrics=["toy_class_accuracy"])
    t2i = dict(backbone="toy-t2i", prompts="toy-captions", num_prompts=6, metrics=["toy_adherence"])
    return {
        "name": "fixture", "world": "toy", "out_dir": str(out_dir), "seed": 0, "device": "cpu",
        "backbones": {"toy-c2i": {"task": "c2i", "num_blocks": 14, "resolution": 32},
                      "toy-t2i": {"task": "t2i", "num_blocks": 14, "resolution": 32}},
        "training": {"toy_c2i": {"config": str(REPO_ROOT / "configs/train/toy_c2i.yaml")},
                     "toy_t2i": {"config": str(REPO_ROOT / "configs/train/toy_t2i.yaml")}},
        "rows": [
            {"name": "c2i_b20", "table": ["table2", "fig8"], "label": "baseline 20", "steps": 20, "method": "baseline",
             **c2i},
            {"name": "c2i_b5", "table": ["table2", "fig8"], "label": "baseline 5", "steps": 5, "method": "baseline",
             **c2i},
            {"name": "c2i_cache", "table": "fig8", "label": "cache", "steps": 20, "method": "cache",
             "cache": {"location": "inner", "num_blocks": 7, "interval": 2}, **c2i},
            {"name": "c2i_ilf", "table": ["table2", "fig8"], "label": "ILF", "steps": 5, "method": "ilf",
             "feedback": {"training": "toy_c2i", "feedback_steps": "outer:2"}, "reference_row": "c2i_b20", **c2i},
            {"name": "t2i_b20", "table": "table1", "label": "baseline 20", "steps": 20, "method": "baseline", **t2i},
            {"name": "t2i_b20_again", "table": "table4", "label": "baseline 20", "steps": 20, "method": "baseline",
             **t2i},  # same images as t2i_b20: shares its folder
            {"name": "t2i_ilf", "table": "table1", "label": "ILF", "steps": 10, "method": "ilf",
             "feedback": {"training": "toy_t2i", "feedback_steps": "outer:4"}, **t2i},
        ],
    }


def _pixels(row: str, index: int) -> np.ndarray:
    """A 32x32 image that differs per row and index (so a wrong image is a visibly wrong one)."""
    rng = np.random.default_rng(sum(map(ord, row)) * 1000 + index)
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def write_fixture_run(root: Path) -> Path:
    """Write the config to `root/config.yaml` and the finished results to `root/out`; returns the config path.

    Per image: `toy_class_accuracy` or `toy_adherence`, and `psnr_ref` (a per-image metric no code names; the
    reference rows have none) in metrics.jsonl. Prompt `digit3`'s first sample is the image where ILF loses most PSNR
    and accuracy to the 20-step baseline (the only image where ILF is wrong and the baseline right).
    """
    root = Path(root)
    raw = fixture_config(root / "out")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_workflow_config(path)
    for row in config["rows"]:
        if row["shares_images_with"]:
            continue
        name, folder = row["name"], Path(row["generation_dir"])
        (folder / "images").mkdir(parents=True, exist_ok=True)
        n_prompts = PROMPTS[row["backbone"]]
        gen, met = [], []
        for i in range(IMAGES[name]):
            prompt_id, sample = i % n_prompts, i // n_prompts
            seed = 1000 * prompt_id + sample  # as the generation record: from prompt and sample, not from the row
            Image.fromarray(_pixels(name, i)).save(folder / "images" / f"{i:06d}.png")
            bf = row["block_forwards_analytic"]
            prompt = f"digit {prompt_id}" if row["task"] == "c2i" else f"caption number {prompt_id}"
            gen.append({"row": name, "index": i, "prompt_id": f"p{prompt_id}", "prompt": prompt,
                        "class_label": prompt_id if row["task"] == "c2i" else None, "sample_index": sample,
                        "seed": seed, "image_path": f"images/{i:06d}.png", "seconds_per_image": 0.01 + 0.001 * i,
                        "block_forwards_measured": bf, "block_forwards_analytic": bf, "device": "cpu",
                        "config_hash": "abc", "git_commit": "deadbeef", "versions": "{}", "date": "2026-01-01"})
            worst = name == "c2i_ilf" and prompt_id == 3 and sample == 0
            metric = "toy_class_accuracy" if row["task"] == "c2i" else "toy_adherence"
            psnr = {} if name in REFERENCES else {"psnr_ref": 10.0 if worst else 30.0 + (i * 13 % 17) + len(name) / 10}
            met.append({"row": name, "index": i, "prompt_id": f"p{prompt_id}", "seed": seed,
                        "image_path": f"images/{i:06d}.png", metric: 0.0 if worst else float((i * 7 + len(name)) % 3 > 0),
                        **psnr})
        (folder / "generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in met))
        values = [r[metric] for r in met]
        write_json_atomic(folder / "metrics_summary.json", {"row": name, "provenance": {}, "metrics": {
            metric: {"value": float(np.mean(values)), "ci_low": 0.1, "ci_high": 0.9, "n": len(values), "reference": None},
            "toy_kid": {"value": 0.001 * len(name), "ci_low": None, "ci_high": None, "n": len(values), "reference": None}}})
    for row in config["rows"]:  # what the workflow's share_images rule links
        if row["shares_images_with"]:
            own = Path(row["generation_dir"]).parent / row["name"]
            own.mkdir(parents=True, exist_ok=True)
            for f in ("generation.jsonl", "metrics.jsonl", "metrics_summary.json", "images"):
                (own / f).symlink_to(Path("..") / row["shares_images_with"] / f)
    return path
