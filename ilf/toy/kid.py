"""Toy KID (a toy metric): clean-fid's Kernel Inception Distance in the toy classifier's class-probability space.

KID (Binkowski et al. 2018) is the squared MMD between generated and real features with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3; its estimator is unbiased, so it does not drift with the number of images.

- features: the toy classifier's class probabilities (the softmax of every head, concatenated: 10-d for
  digits, 4 + 6 + 2 + 5 + 3 = 20-d for shapes), extracted through clean-fid's
  custom-feature-extractor API with the same loading and resizing as toy FID (`ilf.toy.metrics`).
  Why not the 64-d penultimate features toy FID uses: measured on 300 digits per step count (guidance 4), KID
  there ranks steps exactly as toy FID does, fewer steps *closer* to the real digits (20 steps 3.9e6, 10
  steps 3.2e6, 6 steps 2.6e6, 5 steps 2.3e6), so toy FID's inversion is not its small-sample bias; the
  generated features' norm grows with steps past the real images' (real 158; 5/6/10/20 steps 150/155/161/164).
  In class-probability space KID ranks 20 = 10 < 6 < 5 (lower is better), as toy class accuracy does.
- value: `cleanfid.fid.kernel_distance(generated, reference)` (clean-fid's KID: the mean over 100 random
  subsets of size min(n_generated, n_reference, 1000)), with numpy's global RNG seeded for the call and
  restored after it, so a value is reproducible. It can be slightly negative (unbiased estimator).
- reference: the same features of all real held-out toy images (`heldout_images`: 719 digits, 2,000 scenes),
  computed once per classifier and kept as `<toy FID reference name>_probs.safetensors` in
  `$ILF_CACHE/toy_fid_stats/`.
- interval: a 95% seeded bootstrap (`ilf.metrics.bootstrap.bootstrap_ci`) of the linearised estimator: each
  generated image i gets its influence value psi_i = 2 (mean_{j != i} k(y_i, y_j) - mean_r k(y_i, x_r)),
  mean(psi) varies with the generated set as KID does to first order, and the interval is KID + (bootstrap
  quantiles of mean(psi) - mean(psi)). Resampling images with replacement inside KID itself would pair images
  with their own copies and bias it upward; the influence values do not. The reference set is held fixed, as
  for FID's reference statistics. `paired_kid_difference` bootstraps psi_row - psi_reference image by image.

The column `toy_kid` is the raw squared MMD (clean-fid's scale, not x1000). Lower is better.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ilf.io import atomic_path
from ilf.metrics.bootstrap import ALPHA, N_BOOT, bootstrap_ci
from ilf.paths import asset_dir
from ilf.toy.classifiers import DATASETS, check_task, classifier_metadata, heldout_images
from ilf.toy.metrics import classifier_outputs, image_array_outputs, reference_name

NUM_SUBSETS, MAX_SUBSET_SIZE = 100, 1000  # clean-fid's defaults for KID


def toy_probabilities(image_paths: Sequence[str | Path], task: str, verbose: bool = False) -> np.ndarray:
    """(N, C) toy-classifier class probabilities of image files, extracted by clean-fid (loading and resizing as
    for toy FID)."""
    return classifier_outputs(image_paths, task, probabilities=True, verbose=verbose)


def reference_features_path(task: str, directory: Path | None = None) -> Path:
    """Where the reference features of `task` are kept: `<toy FID reference name>_probs.safetensors`."""
    return Path(directory or asset_dir("toy_fid_stats")) / f"{reference_name(task)}_probs.safetensors"


def reference_features(task: str, directory: Path | None = None) -> tuple[np.ndarray, str]:
    """((n, C) toy-classifier class probabilities of all real held-out images of `task`, reference name); made on first
    use with the current classifier (the stored file records its weights' sha256 and is remade if they change)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    check_task(task)
    name = reference_name(task)
    sha = classifier_metadata(task)["weights_sha256"]
    path = reference_features_path(task, directory)
    if path.is_file():
        with safe_open(str(path), framework="numpy") as fh:
            if (fh.metadata() or {}).get("classifier_sha256") == sha:
                return fh.get_tensor("features").astype(np.float64), name
    feats = image_array_outputs(heldout_images(task), task, probabilities=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp_out:
        save_file({"features": feats.astype(np.float32)}, str(tmp_out), metadata={
            "name": name, "task": task, "dataset": DATASETS[task], "split": "heldout", "n": str(len(feats)),
            "classifier_sha256": sha, "metric": "toy_kid reference class probabilities (toy metric)"})
    return feats.astype(np.float32).astype(np.float64), name


def kernel_distance(generated: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID of two (n, d) feature arrays, with its random subsets drawn from `seed` (numpy's global
    RNG state is restored afterwards)."""
    from cleanfid.fid import kernel_distance as _kid

    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(f"KID needs at least 2 feature rows per set, got {len(generated)} and {len(reference)}")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(_kid(np.asarray(generated, np.float64), np.asarray(reference, np.float64),
                          num_subsets=NUM_SUBSETS, max_subset_size=MAX_SUBSET_SIZE))
    finally:
        np.random.set_state(state)


def influence_values(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n,) psi_i = 2 (mean_{j != i} k(y_i, y_j) - mean_r k(y_i, x_r)) with clean-fid's kernel (y.x / d + 1)^3:
    each generated image's first-order share of KID (used for intervals and paired differences only)."""
    y, x = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
    n, d = y.shape
    if n < 2:
        raise ValueError(f"influence values need at least 2 generated images, got {n}")
    k_yy = (y @ y.T / d + 1) ** 3
    k_yx = (y @ x.T / d + 1) ** 3
    return 2.0 * ((k_yy.sum(1) - np.diag(k_yy)) / (n - 1) - k_yx.mean(1))


def kid_with_ci(generated: np.ndarray, reference: np.ndarray, seed: int = 0, n_boot: int = N_BOOT,
                alpha: float = ALPHA) -> tuple[float, float, float]:
    """(KID, ci_low, ci_high): clean-fid's KID and a seeded bootstrap interval of its linearisation."""
    value = kernel_distance(generated, reference, seed)
    psi = influence_values(generated, reference)
    lo, hi = bootstrap_ci(psi, n_boot=n_boot, alpha=alpha, seed=seed)
    return value, value + lo - float(psi.mean()), value + hi - float(psi.mean())


def paired_kid_difference(generated: np.ndarray, generated_ref: np.ndarray, reference: np.ndarray, seed: int = 0,
                          n_boot: int = N_BOOT, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(KID(row) - KID(reference row), ci_low, ci_high) for two rows whose image i share prompt and seed: the
    interval bootstraps psi_row - psi_reference over images (paired, as `ilf.report.paired` does)."""
    if generated.shape != generated_ref.shape:
        raise ValueError(f"paired rows need the same images: shapes {generated.shape} and {generated_ref.shape}")
    diff = kernel_distance(generated, reference, seed) - kernel_distance(generated_ref, reference, seed)
    d_psi = influence_values(generated, reference) - influence_values(generated_ref, reference)
    lo, hi = bootstrap_ci(d_psi, n_boot=n_boot, alpha=alpha, seed=seed)
    return diff, diff + lo - float(d_psi.mean()), diff + hi - float(d_psi.mean())


def toy_kid(image_paths: Sequence[str | Path], task: str, seed: int = 0) -> tuple[float, float, float, int]:
    """Toy KID (a toy metric) of image files against the real held-out toy images of `task`:
    (value, ci_low, ci_high, n). Lower is better; unbiased at small n."""
    check_task(task)
    feats = toy_probabilities(image_paths, task, verbose=len(image_paths) > 1000)
    ref, _ = reference_features(task)
    value, lo, hi = kid_with_ci(feats, ref, seed)
    return value, lo, hi, len(feats)
