"""Metric names (those of the metrics record) -> how each is computed and summarised for one generation row.

Per-image metrics are stored per image and summarised by a mean with a seeded 95% bootstrap
interval; set metrics (FID) give one value with its sample count and reference-statistics name.
`toy_*` names are the toy world's stand-ins, computed by `ilf.toy.metrics` (imported lazily).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ilf.errors import ILFConfigError
from ilf.metrics.assets import DEFAULT_CLIP_MODEL, DEFAULT_FID_REFS
from ilf.metrics.bootstrap import bootstrap_ci
from ilf.metrics.clipiqa import CLIPIQA_METRICS

if TYPE_CHECKING:
    from ilf.metrics.fidelity import ReferenceRow


@dataclass(frozen=True)
class MetricSpec:
    name: str
    per_image: bool          # one value per image (mean + bootstrap CI) or one value per set (FID)
    needs: str | None        # record field it needs: "prompt", "class_label", "reference" (a reference row) or None
    description: str


METRICS: dict[str, MetricSpec] = {s.name: s for s in [
    MetricSpec("image_reward", True, "prompt", "ImageReward-v1.0 x100, mean per prompt then across prompts"),
    MetricSpec("clip_score", True, "prompt", "100 x max(cos, 0) of open_clip image/caption embeddings"),
    MetricSpec("clipiqa_good", True, None, "pyiqa CLIP-IQA standard score x100 (Good)"),
    MetricSpec("clipiqa_noisy", True, None, "CLIP-IQA 'Noisy photo.' vs 'Clean photo.' x100 (lower is better)"),
    MetricSpec("clipiqa_colorful", True, None, "CLIP-IQA 'Colorful photo.' vs 'Dull photo.' x100"),
    MetricSpec("clipiqa_natural", True, None, "CLIP-IQA 'Natural photo.' vs 'Synthetic photo.' x100"),
    MetricSpec("fid_mjhq", False, None, "clean-fid FID against MJHQ-30K statistics"),
    MetricSpec("fid_imagenet", False, None, "clean-fid FID against ImageNet-train statistics (DiT)"),
    MetricSpec("psnr_ref", True, "reference", "PSNR (dB) against the reference row's image, same prompt and seed"),
    MetricSpec("ssim_ref", True, "reference", "SSIM against the reference row's image of the same prompt and seed"),
    MetricSpec("lpips_ref", True, "reference", "LPIPS (AlexNet) against the reference row's image (lower is better)"),
    MetricSpec("toy_fid", False, None, "TOY metric: toy-world FID (ilf.toy.metrics)"),
    MetricSpec("toy_kid", False, None, "TOY metric: toy-world KID, clean-fid's squared MMD, with a bootstrap CI (ilf.toy.kid)"),
    MetricSpec("toy_adherence", True, "prompt", "TOY metric: share of caption attributes present"),
    MetricSpec("toy_class_accuracy", True, "class_label", "TOY metric: toy digit classifier accuracy"),
]}


@dataclass
class MetricOptions:
    clip_model: str = DEFAULT_CLIP_MODEL
    fid_ref: str | None = None           # overrides the default reference of fid_mjhq / fid_imagenet / toy_fid
    fid_mode: str = "clean"
    batch_size: int = 16
    device: str | None = None
    cache_dir: Path | None = None
    seed: int = 0                        # bootstrap seed
    inject: dict[str, Any] = field(default_factory=dict)  # tests: {"image_reward": {...}, "fid": {...}, ...}


def parse_metric_names(spec: str | list[str]) -> list[str]:
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise ILFConfigError("metrics", spec, "a comma-separated list of " + ", ".join(METRICS))
    for n in names:
        if n not in METRICS:
            raise ILFConfigError("metrics", n, list(METRICS))
    return list(dict.fromkeys(names))


def _field(records: list[dict], key: str, metric: str) -> list:
    vals = [r.get(key) for r in records]
    if any(v is None for v in vals):
        raise ValueError(f"metric {metric} needs '{key}' in every generation record; "
                         f"{sum(v is None for v in vals)} of {len(vals)} records have none")
    return vals


def _toy_metrics():
    return importlib.import_module("ilf.toy.metrics")


def _toy_reference_name(tm: Any, task: str) -> str | None:
    """The name of the toy FID reference statistics actually used (None if the toy module cannot say)."""
    name_fn = getattr(tm, "reference_name", None)
    return name_fn(task) if callable(name_fn) else None


def compute_metrics(records: list[dict], row_dir: Path, names: list[str], opts: MetricOptions,
                    reference: "ReferenceRow | None" = None,
                    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], dict[str, str]]:
    """(per-image values, summaries, models used) of `names` over one row's generation records.

    `reference` is the row the `*_ref` metrics compare with (`ilf.metrics.fidelity`); when its folder is this
    row's own, they get no value (the images are identical)."""
    if any(r.get("clip_path") for r in records):  # a video row: per clip
        from ilf.metrics.video import compute_clip_metrics

        return compute_clip_metrics(records, Path(row_dir), names, opts, reference)
    paths = [Path(row_dir) / r["image_path"] for r in records]
    per_image: dict[str, np.ndarray] = {}
    summary: dict[str, dict[str, Any]] = {}
    models: dict[str, str] = {}
    inj = opts.inject
    common = dict(device=opts.device, batch_size=opts.batch_size, cache_dir=opts.cache_dir)

    def per_image_summary(name: str, values: np.ndarray, value: float | None = None, groups=None) -> None:
        per_image[name] = np.asarray(values, dtype=np.float64)
        summary[name] = mean_summary(values, opts.seed, value, groups)

    if "image_reward" in names:
        from ilf.metrics.image_reward import image_reward

        prompts = _field(records, "prompt", "image_reward")
        groups = _field(records, "prompt_id", "image_reward")
        value, scores = image_reward(paths, prompts, groups, **common, **inj.get("image_reward", {}))
        per_image_summary("image_reward", scores, value, groups)
        models["image_reward"] = "ImageReward-v1.0"
    if "clip_score" in names:
        from ilf.metrics.clip_score import clip_score

        _, scores = clip_score(paths, _field(records, "prompt", "clip_score"), opts.clip_model, **common,
                               **inj.get("clip_score", {}))
        per_image_summary("clip_score", scores)
        models["clip_score"] = f"open_clip:{opts.clip_model}"
    ref_names = [n for n in names if METRICS[n].needs == "reference"]
    if ref_names:
        values = _reference_values(records, Path(row_dir), paths, ref_names, reference, opts)
        for name in ref_names:
            if values is None:
                per_image[name] = np.full(len(records), np.nan)
                summary[name] = {"value": None, "ci_low": None, "ci_high": None, "n": 0, "reference": None}
            else:
                per_image_summary(name, values[name])
            summary[name]["reference"] = reference.name
            models[name] = reference_metric_model(name)
    iqa = [n for n in names if n in CLIPIQA_METRICS]
    if iqa:
        from ilf.metrics.clipiqa import clipiqa

        for name, (_, scores) in clipiqa(paths, iqa, **common, **inj.get("clipiqa", {})).items():
            per_image_summary(name, scores)
        models["clipiqa"] = "pyiqa:clipiqa(RN50)"
    for name in ("fid_mjhq", "fid_imagenet"):
        if name in names:
            from ilf.metrics.fid import fid

            value, n, ref = fid(paths, opts.fid_ref or DEFAULT_FID_REFS[name], opts.fid_mode, **common,
                                **inj.get("fid", {}))
            summary[name] = {"value": value, "ci_low": None, "ci_high": None, "n": n, "reference": ref}
            models[name] = f"clean-fid:{opts.fid_mode}:inception_v3"
    toy = [n for n in names if n.startswith("toy_")]
    if toy:
        tm = _toy_metrics()
        if "toy_fid" in toy:
            task = "c2i" if any(r.get("class_label") is not None for r in records) else "t2i"
            value, n = tm.toy_fid(paths, task, reference=opts.fid_ref)
            summary["toy_fid"] = {"value": float(value), "ci_low": None, "ci_high": None, "n": int(n),
                                  "reference": opts.fid_ref or _toy_reference_name(tm, task)}
        if "toy_kid" in toy:
            from ilf.toy.kid import toy_kid

            task = "c2i" if any(r.get("class_label") is not None for r in records) else "t2i"
            value, lo, hi, n = toy_kid(paths, task, seed=opts.seed)
            summary["toy_kid"] = {"value": value, "ci_low": lo, "ci_high": hi, "n": int(n),
                                  "reference": f"{_toy_reference_name(tm, task)}_probs"}
        if "toy_adherence" in toy:
            per_image_summary("toy_adherence",
                              np.asarray(tm.toy_adherence(paths, _field(records, "prompt", "toy_adherence")), float))
        if "toy_class_accuracy" in toy:
            labels = [int(v) for v in _field(records, "class_label", "toy_class_accuracy")]
            per_image_summary("toy_class_accuracy", np.asarray(tm.toy_class_accuracy(paths, labels), float))
        models["toy"] = "ilf.toy.metrics (toy world, not a paper metric)"
    return per_image, {n: summary[n] for n in names}, models


def mean_summary(values: np.ndarray, seed: int, value: float | None = None, groups=None) -> dict[str, Any]:
    """`{value, ci_low, ci_high, n, reference}` of per-image (or per-clip) values: their mean (or `value`) with the
    seeded 95% bootstrap interval (over `groups` where given)."""
    lo, hi = bootstrap_ci(values, groups=groups, seed=seed)
    return {"value": float(np.mean(values)) if value is None else float(value), "ci_low": lo, "ci_high": hi,
            "n": int(len(values)), "reference": None}


def reference_metric_model(name: str) -> str:
    """The library (and network) a reference metric is computed with, for the summary's provenance."""
    from importlib.metadata import version

    return (f"lpips {version('lpips')} alex v0.1 + torchvision AlexNet IMAGENET1K_V1" if name == "lpips_ref"
            else f"torchmetrics {version('torchmetrics')}")


def _reference_values(records: list[dict], row_dir: Path, paths: list[Path], names: list[str],
                      reference: "ReferenceRow | None", opts: MetricOptions) -> dict[str, np.ndarray] | None:
    """Per-image psnr_ref / ssim_ref / lpips_ref of a row, or None when the reference is the row's own folder."""
    from ilf.metrics.fidelity import fidelity, pair_with_reference

    if reference is None:
        raise ValueError(f"{names[0]} compares every image with its reference row's image of the same prompt and "
                         f"seed: name the reference's folder (`ilf metrics --reference-dir DIR`)")
    if reference.row_dir.resolve() == row_dir.resolve():  # the reference itself: identical images, no value
        return None
    ref_paths = pair_with_reference(records, reference, str(records[0].get("row") or row_dir.name))
    return fidelity(paths, ref_paths, names, device=opts.device, batch_size=opts.batch_size, cache_dir=opts.cache_dir,
                    **opts.inject.get("fidelity", {}))
