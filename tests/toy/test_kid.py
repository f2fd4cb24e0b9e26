"""Toy KID: clean-fid's KID, its bootstrap interval, and the ranking of step counts on the toy study's images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilf.toy.kid import (influence_values, kernel_distance, kid_with_ci, paired_kid_difference, reference_features,
                         toy_kid, toy_probabilities)

REPO = Path(__file__).resolve().parents[2]
STUDY_SUBSET = REPO / "results" / "toy_study" / "kid_check_images.npz"
STEPS = {"c2i_b20": 20, "c2i_b10": 10, "c2i_b6": 6, "c2i_b5": 5}


def _gauss(n: int, shift: float, seed: int, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, d))


def test_kernel_distance_is_clean_fids_seeded_and_leaves_numpys_rng_alone():
    from cleanfid.fid import kernel_distance as clean_kid

    a, b = _gauss(60, 0.0, 1), _gauss(80, 0.5, 2)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    v = kernel_distance(a, b, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's global RNG is untouched
    np.random.seed(7)
    assert v == clean_kid(a, b, num_subsets=100, max_subset_size=1000)
    assert kernel_distance(a, b, seed=7) == v
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(a[:1], b)


def test_interval_covers_zero_for_the_same_distribution_and_excludes_it_for_another():
    ref = _gauss(400, 0.0, 0)
    same, lo, hi = kid_with_ci(_gauss(200, 0.0, 1), ref)
    assert lo <= same <= hi and lo < 0 < hi
    far, lo2, hi2 = kid_with_ci(_gauss(200, 0.6, 2), ref)
    assert far > hi and lo2 > 0 and lo2 <= far <= hi2
    psi = influence_values(_gauss(50, 0.6, 3), ref)
    assert psi.shape == (50,) and np.isfinite(psi).all()


def test_paired_difference_sign():
    ref = _gauss(300, 0.0, 0)
    near, far = _gauss(150, 0.2, 5), _gauss(150, 0.2, 5) + 0.5  # the same draws, one shifted further
    diff, lo, hi = paired_kid_difference(far, near, ref)
    assert diff > 0 and lo > 0 and lo <= diff <= hi
    assert diff == pytest.approx(kernel_distance(far, ref) - kernel_distance(near, ref))
    with pytest.raises(ValueError, match="same images"):
        paired_kid_difference(far[:10], near, ref)


def test_reference_probabilities_are_cached_and_sum_to_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ILF_CACHE", str(tmp_path))
    ref, name = reference_features("c2i")
    assert ref.shape == (719, 10) and name == "toy_digits_c2i_32px_heldout_n719"
    assert np.allclose(ref.sum(1), 1.0, atol=1e-5)
    assert (tmp_path / "toy_fid_stats" / f"{name}_probs.safetensors").is_file()
    again, _ = reference_features("c2i")
    assert np.array_equal(ref, again)


def _write(images: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"{i:06d}.png")
        Image.fromarray(im).save(paths[-1])
    return paths


def test_toy_kid_ranks_the_toy_studys_step_counts(tmp_path):
    """On 200 digits per row re-made from the toy study's records (20 per class, the study's seeds:
    `ilf toy study-subset`), toy KID ranks the 20-step baseline >= 10 >= 6 >= 5 steps (lower is
    better). 20 and 10 steps classify the same digits in the study; there, 'not worse' means the paired
    interval of KID(20) - KID(10) reaches below zero."""
    data = np.load(STUDY_SUBSET)
    kid, feats = {}, {}
    for row in STEPS:
        paths = _write(data[row], tmp_path / row)
        value, lo, hi, n = toy_kid(paths, "c2i")
        assert n == 200 and lo <= value <= hi
        kid[row], feats[row] = value, toy_probabilities(paths, "c2i")
    assert kid["c2i_b10"] < kid["c2i_b6"] < kid["c2i_b5"], kid
    ref, _ = reference_features("c2i")
    diff, lo, _ = paired_kid_difference(feats["c2i_b20"], feats["c2i_b10"], ref)
    assert kid["c2i_b20"] <= kid["c2i_b10"] or lo < 0, (kid, diff, lo)
    assert kid["c2i_b20"] < kid["c2i_b5"]
    # the re-made images are the study's: their toy class accuracy is the stored per-image record
    from ilf.toy.metrics import toy_class_accuracy

    acc = toy_class_accuracy(_write(data["c2i_b5"], tmp_path / "again"), list(data["c2i_b5__class"]))
    assert (acc == data["c2i_b5__toy_class_accuracy"]).mean() >= 0.99


def test_known_answers_real_digits_near_zero_mode_dropping_and_noise_far(tmp_path):
    from ilf.toy.classifiers import digits_split

    _, _, images, labels, _ = digits_split()
    idx = np.random.default_rng(1).permutation(len(labels))[:200]
    real = toy_kid(_write(images[idx], tmp_path / "real"), "c2i")
    half = idx[labels[idx] < 5]
    dropped = toy_kid(_write(images[half], tmp_path / "half"), "c2i")
    noise = toy_kid(_write(np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
                           tmp_path / "noise"), "c2i")
    assert real[1] < 0.002 and abs(real[0]) < 0.002  # held-out real digits (part of the reference set)
    assert dropped[0] > real[0] + 0.01 and dropped[1] > real[2]
    assert noise[0] > real[0] + 0.01 and noise[1] > real[2]  # (noise vs half the classes: no fixed order here)


def test_registry_summary_has_interval(tmp_path):
    from ilf.metrics.registry import MetricOptions, compute_metrics
    from ilf.toy.classifiers import digits_split

    _, _, images, labels, _ = digits_split()
    paths = _write(images[:40], tmp_path / "images")
    records = [{"image_path": f"images/{p.name}", "class_label": int(c)} for p, c in zip(paths, labels[:40])]
    per_image, summary, models = compute_metrics(records, tmp_path, ["toy_kid"], MetricOptions())
    s = summary["toy_kid"]
    assert s["n"] == 40 and s["ci_low"] <= s["value"] <= s["ci_high"] and s["ci_low"] < s["ci_high"]
    assert s["reference"] == "toy_digits_c2i_32px_heldout_n719_probs" and "toy_kid" not in per_image
