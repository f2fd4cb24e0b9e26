"""Toy metrics: toy FID, toy adherence and toy class accuracy (toy stand-ins for the paper's Sec. 4 metrics).

These are TOY metrics, computed with small CNNs trained on the toy data (`ilf.toy.classifiers`),
never comparable to the paper's FID / CLIP score / ImageReward numbers:

- `toy_fid`: Frechet distance (the FID formula, Heusel et al. 2017) between generated images and
  real held-out toy images, in the 64-d penultimate feature space of the toy classifier, computed
  through clean-fid's custom-feature-extractor API (`cleanfid.fid.get_files_features` with the toy
  network as `model` and a toy-resolution `custom_fn_resize`, then `cleanfid.fid.frechet_distance`).
- `toy_adherence` (t2i, the CLIP-score analogue): per image, the share of the caption's attributes
  (shape, color, size, position, count) that the toy attribute classifier recovers.
- `toy_class_accuracy` (c2i): per image, 1 if the toy digit classifier predicts the class label.

Reference statistics are named `toy_<dataset>_<task>_<res>px_heldout_n<n>` (e.g.
`toy_shapes_t2i_32px_heldout_n2000`); the defaults ship beside the classifier weights, any other
`n` is made deterministically on first use into `$ILF_CACHE/toy_fid_stats/`.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ilf.errors import ILFConfigError
from ilf.io import atomic_path
from ilf.paths import asset_dir
from ilf.toy.classifiers import (
    DATASETS, ToyClassifier, check_task, classifier_dir, classifier_metadata, heldout_images, load_classifier,
)

REFERENCE_PATTERN = re.compile(r"^toy_(shapes|digits)_(t2i|c2i)_(\d+)px_heldout_n(\d+)$")
BATCH_SIZE = 256


class ToyFeatureExtractor(nn.Module):
    """clean-fid custom feature extractor: (B, 3, H, W) floats in [0, 255] -> (B, 64) toy classifier features (toy
    FID) or, with `probabilities`, (B, C) the softmax of every head concatenated in the heads' order (toy KID)."""

    def __init__(self, classifier: ToyClassifier, probabilities: bool = False):
        super().__init__()
        self.classifier = classifier
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / 255.0
        if self.probabilities:
            return torch.cat([logits.softmax(1) for logits in self.classifier(x).values()], dim=1)
        return self.classifier.features(x)


def toy_resizer(resolution: int):
    """clean-fid `custom_fn_resize`: images at the toy resolution pass unchanged (as float32); others are
    resized with clean-fid's own anti-aliased PIL bicubic resizer (its "clean" mode, at toy resolution)."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (resolution, resolution))

    def fn(img: np.ndarray) -> np.ndarray:
        if img.shape[:2] == (resolution, resolution):
            return img.astype(np.float32)
        return resize(img)

    return fn


def _paths(image_paths: Sequence[str | Path], field: str = "image_paths") -> list[str]:
    paths = [str(p) for p in image_paths]
    if not paths:
        raise ValueError(f"{field} is empty: expected at least one image file")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} images do not exist, e.g. {missing[0]}")
    return paths


def classifier_outputs(image_paths: Sequence[str | Path], task: str, probabilities: bool = False,
                       verbose: bool = False, classifiers: Path | None = None) -> np.ndarray:
    """(N, D) `ToyFeatureExtractor` outputs of image files, extracted by clean-fid (its image loading, then
    `toy_resizer`): the 64-d toy FID features, or with `probabilities` the toy KID class probabilities."""
    from cleanfid.fid import get_files_features

    model = load_classifier(task, classifiers)
    what = "toy KID" if probabilities else "toy FID"
    return get_files_features(_paths(image_paths), model=ToyFeatureExtractor(model, probabilities), num_workers=0,
                              batch_size=BATCH_SIZE, device=torch.device("cpu"), mode="clean",
                              custom_fn_resize=toy_resizer(model.config.resolution),
                              description=f"{what} features ({task})", verbose=verbose).astype(np.float64)


def image_array_outputs(images: np.ndarray, task: str, probabilities: bool = False,
                        classifiers: Path | None = None) -> np.ndarray:
    """`classifier_outputs` of in-memory uint8 images (N, H, W, 3), written as PNG files first so that they are
    loaded and resized exactly as generated image files are."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="ilf_toy_ref_") as tmp:
        paths = []
        for i, im in enumerate(images):
            paths.append(Path(tmp) / f"{i:06d}.png")
            Image.fromarray(im).save(paths[-1])
        return classifier_outputs(paths, task, probabilities, verbose=len(paths) > 1000, classifiers=classifiers)


def toy_features(image_paths: Sequence[str | Path], task: str, verbose: bool = False,
                 classifiers: Path | None = None) -> np.ndarray:
    """(N, 64) toy classifier features of image files, extracted by clean-fid with the toy network."""
    return classifier_outputs(image_paths, task, verbose=verbose, classifiers=classifiers)


# --- reference statistics ------------------------------------------------------------------------

def reference_name(task: str, n: int | None = None, classifiers: Path | None = None) -> str:
    """The name of the toy FID reference statistics: dataset, task, resolution, split and n spelled out."""
    meta = classifier_metadata(task, classifiers)
    n = n or int(meta["n_heldout"])
    return f"toy_{DATASETS[task]}_{task}_{meta['config']['resolution']}px_heldout_n{n}"


def _stats_dirs() -> list[Path]:
    return [classifier_dir(), asset_dir("toy_fid_stats")]


def _read_stats(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return fh.get_tensor("mu"), fh.get_tensor("sigma"), dict(fh.metadata() or {})


def make_reference_stats(task: str, n: int | None = None, directory: Path | None = None,
                         images: np.ndarray | None = None, classifiers: Path | None = None) -> Path:
    """Compute toy FID reference statistics (mean, covariance) of `n` real held-out toy images through
    clean-fid and write `<directory>/<reference_name>.safetensors` atomically (default directory:
    `$ILF_CACHE/toy_fid_stats`); `classifiers` is the classifier directory (default: `classifier_dir()`)."""
    from safetensors.numpy import save_file

    check_task(task)
    if images is None:
        images = heldout_images(task, n)
    name = reference_name(task, len(images), classifiers)
    out = Path(directory or asset_dir("toy_fid_stats")) / f"{name}.safetensors"
    feats = image_array_outputs(images, task, classifiers=classifiers)
    meta = classifier_metadata(task, classifiers)
    with atomic_path(out) as tmp_out:
        save_file({"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}, str(tmp_out), metadata={
            "name": name, "task": task, "dataset": DATASETS[task], "split": "heldout", "n": str(len(images)),
            "resolution": str(meta["config"]["resolution"]), "classifier_sha256": meta["weights_sha256"],
            "metric": "toy_fid (toy metric, not comparable to FID)"})
    return out


def load_reference_stats(task: str, reference: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, name) of a toy FID reference: None = the shipped default for `task`; a name as spelled by
    `reference_name`; or a path to a `.safetensors` stats file. Stats made with other classifier weights are
    ignored (and remade when the name says how)."""
    check_task(task)
    sha = classifier_metadata(task)["weights_sha256"]
    if reference is not None and reference.endswith(".safetensors"):
        mu, sigma, meta = _read_stats(Path(reference))
        if meta.get("classifier_sha256") != sha or meta.get("task") != task:
            raise ValueError(f"reference={reference!r} was made for task {meta.get('task')!r} with other toy "
                             f"classifier weights; remake it with ilf.toy.metrics.make_reference_stats")
        return mu, sigma, meta.get("name", Path(reference).stem)
    name = reference or reference_name(task)
    match = REFERENCE_PATTERN.match(name)
    resolution = classifier_metadata(task)["config"]["resolution"]
    if not match or match.group(2) != task or match.group(1) != DATASETS[task] or int(match.group(3)) != resolution:
        raise ILFConfigError("reference", name, f"a toy FID reference for task {task!r} named like "
                             f"{reference_name(task)!r} (toy_<dataset>_<task>_<res>px_heldout_n<n>), or a "
                             f".safetensors stats file")
    for d in _stats_dirs():
        path = d / f"{name}.safetensors"
        if path.is_file():
            mu, sigma, meta = _read_stats(path)
            if meta.get("classifier_sha256") == sha:
                return mu, sigma, name
    path = make_reference_stats(task, int(match.group(4)))
    mu, sigma, _ = _read_stats(path)
    return mu, sigma, name


# --- the three toy metrics (metrics record names) ----------------------------------------------------------

def toy_fid(image_paths: list[Path], task: str, reference: str | None = None) -> tuple[float, int]:
    """Toy FID (a toy metric): Frechet distance between the toy-classifier features of `image_paths` and the
    reference statistics of real held-out toy images, via clean-fid. Returns (value, n)."""
    check_task(task)
    paths = _paths(image_paths)
    if len(paths) < 2:
        raise ValueError(f"toy_fid needs at least 2 images for a covariance, got {len(paths)}")
    from cleanfid.fid import frechet_distance

    ref_mu, ref_sigma, _ = load_reference_stats(task, reference)
    feats = toy_features(paths, task, verbose=len(paths) > 1000)
    value = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), ref_mu, ref_sigma)
    return float(value), len(paths)


@torch.no_grad()
def _predict_files(image_paths: Sequence[str | Path], task: str) -> dict[str, np.ndarray]:
    """Class index per classifier head for each image file (loaded and resized exactly as for toy FID)."""
    from cleanfid.utils import ResizeDataset

    model = load_classifier(task)
    dataset = ResizeDataset(_paths(image_paths), mode="clean")
    dataset.fn_resize = toy_resizer(model.config.resolution)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False, num_workers=0)
    out: dict[str, list[np.ndarray]] = {k: [] for k in model.config.heads}
    for batch in loader:
        for k, logits in model(batch / 255.0).items():
            out[k].append(logits.argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def toy_attribute_predictions(image_paths: list[Path]) -> list[dict[str, str]]:
    """What the toy attribute classifier reads from each shapes image, e.g. {'shape': 'circle', ...}."""
    heads = load_classifier("t2i").config.heads
    pred = _predict_files(image_paths, "t2i")
    return [{k: heads[k][int(pred[k][i])] for k in heads} for i in range(len(image_paths))]


def toy_adherence(image_paths: list[Path], captions: list[str]) -> np.ndarray:
    """Toy adherence (a toy metric, the CLIP-score analogue): per image, the share in [0, 1] of the caption's
    attributes that the toy attribute classifier recovers from the image."""
    from ilf.toy.data import parse_caption

    if len(captions) != len(image_paths):
        raise ValueError(f"captions has {len(captions)} entries but image_paths has {len(image_paths)}")
    wanted = [parse_caption(c) for c in captions]
    for c, w in zip(captions, wanted):
        if not w:
            raise ValueError(f"caption {c!r} names no toy attribute: toy_adherence needs a shapes caption")
    predicted = toy_attribute_predictions(image_paths)
    return np.array([np.mean([p[a] == v for a, v in w.items()]) for p, w in zip(predicted, wanted)],
                    dtype=np.float64)


def toy_class_accuracy(image_paths: list[Path], labels: list[int]) -> np.ndarray:
    """Toy class accuracy (a toy metric): per image, 1.0 if the toy digit classifier predicts `labels[i]`, else 0.0."""
    if len(labels) != len(image_paths):
        raise ValueError(f"labels has {len(labels)} entries but image_paths has {len(image_paths)}")
    classes = load_classifier("c2i").config.heads["digit"]
    bad = [lab for lab in labels if lab is None or not 0 <= int(lab) < len(classes)]
    if bad:
        raise ILFConfigError("labels", bad[0], f"digit class labels 0..{len(classes) - 1}")
    pred = _predict_files(image_paths, "c2i")["digit"]
    return (pred == np.asarray(labels, dtype=np.int64)).astype(np.float64)


def describe() -> dict[str, Any]:
    """Held-out accuracies of the shipped toy classifiers (for the README), per task and head."""
    return {task: classifier_metadata(task)["heldout_accuracy"] for task in DATASETS}
