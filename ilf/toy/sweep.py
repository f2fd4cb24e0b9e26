"""Step sweep: toy quality of the plain DPM-Solver++ sampler against the number of steps.

Before a toy study, this says where the toy world has a step gap for ILF to recover: it samples the same
conditions and initial noise at each step count and scores every image with the toy metric of the task
(`toy_class_accuracy` for digits, `toy_adherence` for shapes), then gives each count's mean and the 95%
bootstrap interval of its paired per-image difference to the largest count.

    ilf toy step-sweep --task c2i --n 300 --steps 3,4,5,6,8,10,12,20
    ilf toy step-sweep --task t2i --backbone toy-flux --n 192 --steps 12,20   # the flow toy (its Euler sampler)
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ilf.errors import ILFConfigError
from ilf.metrics.bootstrap import bootstrap_ci
from ilf.toy.pipelines import GUIDANCE_SCALE, load_toy_pipeline, sample_toy, toy_conditions


def _scores(task: str, images: np.ndarray, cond: dict, tmp: Path) -> np.ndarray:
    """Per-image toy metric of (N, H, W, 3) images in [0, 1] (files: the toy metrics read PNGs, as in the study)."""
    from ilf.toy.metrics import toy_adherence, toy_class_accuracy

    paths = []
    for i, im in enumerate(images):
        paths.append(tmp / f"{i:05d}.png")
        Image.fromarray((im * 255).round().astype(np.uint8)).save(paths[-1])
    if task == "c2i":
        return np.asarray(toy_class_accuracy(paths, cond["class_labels"]), dtype=float)
    return np.asarray(toy_adherence(paths, cond["prompt"]), dtype=float)


@torch.no_grad()
def step_sweep(task: str, steps: Sequence[int], n: int = 300, seed: int = 0, guidance_scale: float = GUIDANCE_SCALE,
               root: str | Path | None = None, progress: bool = True, backbone: str | None = None) -> list[dict]:
    """One record per step count: mean toy metric and the paired difference to the largest count with its CI.

    Digits: class i % 10 for image i; shapes: `toy_prompts(n, seed + 123)` (not the study's prompt seed). Every
    step count starts from the same generator seed, so the images are paired across counts. `backbone="toy-flux"`
    (t2i only) samples the flow-matching toy with its Euler sampler and true guidance instead of toy-t2i.
    """
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be positive integers, got {list(steps)}")
    cond = toy_conditions(task, n, prompt_seed=seed + 123)
    if backbone == "toy-flux" and task == "t2i":
        from ilf.toy.flux import load_toy_flux_pipeline, sample_toy_flux

        flux = load_toy_flux_pipeline(root=root)
        sample = lambda k: sample_toy_flux(flux, cond["prompt"], k, seed, guidance_scale)  # noqa: E731
    elif backbone in (None, f"toy-{task}"):
        pipe = load_toy_pipeline(task, root=root)
        sample = lambda k: sample_toy(pipe, task, cond, k, seed, guidance_scale)  # noqa: E731
    else:
        raise ILFConfigError("backbone", backbone, [f"toy-{task}"] + (["toy-flux"] if task == "t2i" else []))
    metric = "toy_class_accuracy" if task == "c2i" else "toy_adherence"
    scores: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in tqdm(sorted(set(steps)), desc=f"step sweep toy-{task}", disable=not progress):
            images = sample(k)
            sub = Path(tmp) / str(k)
            sub.mkdir()
            scores[k] = _scores(task, images, cond, sub)
    ref = max(scores)
    out = []
    for k, v in scores.items():
        diff = v - scores[ref]
        lo, hi = bootstrap_ci(diff, seed=seed)
        out.append({"task": task, "backbone": backbone or f"toy-{task}", "metric": metric, "steps": k, "n": n,
                    "mean": float(v.mean()),
                    "reference_steps": ref, "diff_vs_reference": float(diff.mean()), "diff_ci_low": lo, "diff_ci_high": hi})
    return out
