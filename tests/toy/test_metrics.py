"""Toy metrics (toy FID, toy adherence, toy class accuracy) against known answers: real held-out toy images
must score well, noise must score badly, clean-fid must agree with a direct scipy Frechet distance."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import linalg

from ilf.errors import ILFConfigError, MissingAssetError
from ilf.toy import classifiers as tc
from ilf.toy import metrics as tm
from ilf.toy.data import make_shapes_dataset

N = 200
FRESH_SEED = 424_242  # neither the classifier's training scenes nor the reference's held-out scenes


def _write(images: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.png" for i in range(len(images))]
    for p, im in zip(paths, images):
        Image.fromarray(im).save(p)
    return paths


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    images, captions, _ = make_shapes_dataset(N, FRESH_SEED)
    return _write(images, tmp_path_factory.mktemp("shapes")), captions


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    _, _, images, labels, _ = tc.digits_split()  # held out from classifier training
    idx = np.random.default_rng(1).permutation(len(labels))[:N]
    return _write(images[idx], tmp_path_factory.mktemp("digits")), [int(v) for v in labels[idx]]


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    images = np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    return _write(images, tmp_path_factory.mktemp("noise"))


def test_shipped_classifiers_and_reference_match():
    for task in tc.TASKS:
        meta = tc.classifier_metadata(task)
        assert hashlib.sha256(tc.weights_path(task).read_bytes()).hexdigest() == meta["weights_sha256"]
        name = tm.reference_name(task)
        assert name.startswith(f"toy_{tc.DATASETS[task]}_{task}_32px_heldout_n")
        path = tc.DEFAULT_DIR / f"{name}.safetensors"
        assert tm._read_stats(path)[2]["classifier_sha256"] == meta["weights_sha256"]


def test_adherence_real_high_noise_low(shapes, noise):
    paths, captions = shapes
    real = tm.toy_adherence(paths, captions)
    fake = tm.toy_adherence(noise, captions)
    assert real.shape == (N,) and ((0 <= real) & (real <= 1)).all()
    assert real.mean() > 0.9, real.mean()
    assert fake.mean() < 0.5, fake.mean()
    # mismatched captions (rotated by one) must score lower than the true ones
    assert tm.toy_adherence(paths, captions[1:] + captions[:1]).mean() < real.mean() - 0.3


def test_class_accuracy_real_high_noise_low(digits, noise):
    paths, labels = digits
    real = tm.toy_class_accuracy(paths, labels)
    assert set(np.unique(real)) <= {0.0, 1.0}
    assert real.mean() > 0.9, real.mean()
    assert tm.toy_class_accuracy(noise, labels).mean() < 0.3
    assert tm.toy_class_accuracy(paths, [(v + 1) % 10 for v in labels]).mean() < 0.1


@pytest.mark.parametrize("task", ["t2i", "c2i"])
def test_toy_fid_real_low_noise_high(task, shapes, digits, noise):
    paths = shapes[0] if task == "t2i" else digits[0]
    real, n = tm.toy_fid(paths, task)
    fake, _ = tm.toy_fid(noise, task)
    assert n == N
    assert 0 <= real < 0.1 * fake, (real, fake)


def test_toy_fid_sees_mode_dropping_and_blur(tmp_path, shapes, digits):
    """Known answers: a digits set missing half the classes, and blurred shapes, are farther from real data."""
    _, _, images, labels, _ = tc.digits_split()
    half = _write(images[labels < 5][:N], tmp_path / "half")
    assert tm.toy_fid(half, "c2i")[0] > 2 * tm.toy_fid(digits[0], "c2i")[0]
    blurred = [np.asarray(Image.open(p).filter(ImageFilter.GaussianBlur(1.0))) for p in shapes[0]]
    assert tm.toy_fid(_write(np.stack(blurred), tmp_path / "blur"), "t2i")[0] > 2 * tm.toy_fid(shapes[0], "t2i")[0]


def test_toy_fid_equals_direct_scipy_frechet(shapes):
    """clean-fid's custom-extractor path = features by hand + the Frechet formula written out with scipy."""
    paths = shapes[0]
    value, _ = tm.toy_fid(paths, "t2i")
    model = tc.load_classifier("t2i")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        feats = model.features(tc.to_tensor(images)).double().numpy()
    mu1, s1 = feats.mean(0), np.cov(feats, rowvar=False)
    mu2, s2, _ = tm.load_reference_stats("t2i")
    covmean = linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert value == pytest.approx(direct, rel=1e-5, abs=1e-8)


def test_deterministic(shapes):
    paths, captions = shapes
    assert tm.toy_fid(paths, "t2i") == tm.toy_fid(paths, "t2i")
    assert np.array_equal(tm.toy_adherence(paths, captions), tm.toy_adherence(paths, captions))


def test_training_deterministic(tmp_path):
    tiny = tc.TrainSettings(n_train=128, n_heldout=64, epochs=1)
    recs = [tc.train_classifiers(tmp_path / str(i), "t2i", seed=3, settings=tiny, make_reference=False)
            for i in range(2)]
    assert recs[0]["weights_sha256"] == recs[1]["weights_sha256"]
    assert recs[0]["heldout_accuracy"] == recs[1]["heldout_accuracy"]
    other = tc.train_classifiers(tmp_path / "other", "t2i", seed=4, settings=tiny, make_reference=False)
    assert other["weights_sha256"] != recs[0]["weights_sha256"]


def test_reference_made_on_first_use(tmp_path, monkeypatch, digits):
    monkeypatch.setenv("ILF_CACHE", str(tmp_path))
    value, n = tm.toy_fid(digits[0], "c2i", reference="toy_digits_c2i_32px_heldout_n100")
    assert (tmp_path / "toy_fid_stats" / "toy_digits_c2i_32px_heldout_n100.safetensors").is_file()
    assert n == N and np.isfinite(value)
    assert tm.toy_fid(digits[0], "c2i", reference="toy_digits_c2i_32px_heldout_n100")[0] == value


def test_missing_weights_name_file_and_command(tmp_path, monkeypatch, shapes):
    monkeypatch.setenv(tc.DIR_ENV, str(tmp_path))
    tc._load_cached.cache_clear()
    try:
        with pytest.raises(MissingAssetError, match=r"toy_t2i_classifier\.json.*ilf toy train-classifiers --task t2i"):
            tm.toy_adherence(shapes[0], shapes[1])
    finally:
        tc._load_cached.cache_clear()


def test_bad_input(shapes, digits):
    paths, captions = shapes
    with pytest.raises(ILFConfigError, match="task"):
        tm.toy_fid(paths, "t2v")
    with pytest.raises(ValueError, match="captions"):
        tm.toy_adherence(paths, captions[:-1])
    with pytest.raises(ValueError, match="labels"):
        tm.toy_class_accuracy(digits[0], [10] * N)
    with pytest.raises(ValueError, match="reference"):
        tm.toy_fid(paths, "t2i", reference="toy_digits_c2i_32px_heldout_n100")
    with pytest.raises(ValueError, match="at least 2"):
        tm.toy_fid(paths[:1], "t2i")
    with pytest.raises(ValueError, match="unknown word"):
        tm.toy_adherence(paths[:1], ["two green hexagons"])


def test_classifier_weights_that_do_not_match_their_record_are_refused(tmp_path):
    """A classifier file with one flipped data byte still loads as safetensors; its recorded sha256 tells."""
    import shutil

    from ilf.errors import CheckpointError

    for p in (tc.weights_path("c2i"), tc.config_path("c2i")):
        shutil.copy(p, tmp_path / p.name)
    tc.load_classifier("c2i", tmp_path)  # an intact copy loads
    weights = tmp_path / tc.weights_path("c2i").name
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor
    weights.write_bytes(bytes(data))
    tc._load_cached.cache_clear()
    try:
        with pytest.raises(CheckpointError, match=str(weights)):
            tc.load_classifier("c2i", tmp_path)
    finally:
        tc._load_cached.cache_clear()


def test_toy_tasks_are_one_list_and_one_check():
    from ilf.toy import backbones, tasks

    assert backbones.TASKS is tc.TASKS is tasks.TASKS == ("t2i", "c2i")
    assert backbones.check_task is tc.check_task is tasks.check_task
    assert tasks.check_task("c2i") == "c2i"
    with pytest.raises(ILFConfigError, match="task"):
        tasks.check_task("t3i")


def test_extracted_features_and_probabilities_are_the_classifiers_outputs(digits):
    """One clean-fid extractor serves toy FID (features) and toy KID (class probabilities)."""
    from ilf.toy.kid import toy_probabilities

    paths = digits[0][:16]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in paths])).permute(0, 3, 1, 2).float() / 255.0
    model = tc.load_classifier("c2i")
    with torch.no_grad():
        feats, logits = model.features(x).double().numpy(), model(x)["digit"].double()
    # the same float32 network on the same uint8 pixels; only the batch size differs, which may change how the
    # 1024-term projection sums round: 1e-5 relative is ~100 float32 eps (1.2e-7), far above that, far below a bug
    assert np.allclose(tm.toy_features(paths, "c2i"), feats, rtol=1e-5, atol=1e-5)
    assert np.allclose(toy_probabilities(paths, "c2i"), logits.softmax(1).numpy(), rtol=1e-5, atol=1e-6)
