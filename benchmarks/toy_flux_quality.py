"""Toy quality of the flow-matching toy (toy-flux) against the PixArt toy (toy-t2i) on the shapes task.

    python benchmarks/toy_flux_quality.py [N] [OUT_DIR] [GUIDANCE]     # defaults: 192 results/toy_flux 4.0

Same captions (`toy_prompts(N, 123)`, those of `ilf toy step-sweep --seed 0`), seed 0, 20 and 12 steps; each backbone
with its own sampler (toy-t2i: DPM-Solver++, toy-flux: FLUX.1's Euler flow sampler, true guidance). Prints one JSON
line per (backbone, steps): toy adherence with its 95% bootstrap interval, per-attribute accuracy and toy FID; then
the paired (by caption) differences toy-flux - toy-t2i, and toy-flux 12 - 20 steps. The lines also go to
OUT_DIR/quality_g<GUIDANCE>.log. docs/toy.md quotes them.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilf.metrics.bootstrap import bootstrap_ci
from ilf.toy.data import parse_caption
from ilf.toy.flux import load_toy_flux_pipeline, sample_toy_flux
from ilf.toy.metrics import toy_attribute_predictions, toy_fid
from ilf.toy.pipelines import load_toy_pipeline, sample_toy, toy_conditions


def _score(images: np.ndarray, wanted: list[dict], folder: Path) -> tuple[np.ndarray, dict, float]:
    folder.mkdir()
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray((im * 255).round().astype(np.uint8)).save(paths[-1])
    pred = toy_attribute_predictions(paths)
    per = np.array([np.mean([p[a] == v for a, v in w.items()]) for p, w in zip(pred, wanted)])
    attrs = {a: float(np.mean([p[a] == w[a] for p, w in zip(pred, wanted)])) for a in wanted[0]}
    return per, attrs, toy_fid(paths, "t2i")[0]


def main(n: int = 192, out: Path = Path("results/toy_flux"), guidance: float = 4.0) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"quality_g{guidance}.log"
    log.write_text("")

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        with log.open("a") as f:
            f.write(line + "\n")

    cond = toy_conditions("t2i", n, prompt_seed=123)
    wanted = [parse_caption(c) for c in cond["prompt"]]
    flux, pix = load_toy_flux_pipeline(), load_toy_pipeline("t2i")
    samplers = {"toy-flux": lambda k: sample_toy_flux(flux, cond["prompt"], k, 0, guidance),
                "toy-t2i": lambda k: sample_toy(pix, "t2i", cond, k, 0, guidance)}
    scores: dict[tuple[str, int], np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (20, 12):
            for name, sample in samplers.items():
                per, attrs, fid = _score(sample(steps), wanted, Path(tmp) / f"{name}_{steps}")
                scores[(name, steps)] = per
                emit({"backbone": name, "steps": steps, "n": n, "guidance": guidance, "toy_adherence": per.mean(),
                      "ci": bootstrap_ci(per, seed=0), "per_attribute": attrs, "toy_fid": fid})
            d = scores[("toy-flux", steps)] - scores[("toy-t2i", steps)]
            emit({"steps": steps, "flux_minus_pixart": d.mean(), "ci": bootstrap_ci(d, seed=0)})
    d = scores[("toy-flux", 12)] - scores[("toy-flux", 20)]
    emit({"flux 12 - 20": d.mean(), "ci": bootstrap_ci(d, seed=0)})


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 192, Path(args[1]) if len(args) > 1 else Path("results/toy_flux"),
         float(args[2]) if len(args) > 2 else 4.0)
