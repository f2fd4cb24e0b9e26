"""Fidelity to a reference row (psnr_ref, ssim_ref, lpips_ref): pairing by prompt and seed, known answers, the
reference row's own (empty) value, the offline LPIPS error and a reference that lacks images."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilf.cli import main
from ilf.errors import MissingAssetError
from ilf.harness.generate import derive_seed
from ilf.metrics import compute_row_metrics
from ilf.metrics.assets import ALEXNET_URL, asset_location
from ilf.metrics.fidelity import fidelity, load_lpips, psnr, ssim

SIZE = 32  # the toy resolution; SSIM's 11 x 11 window fits


def write_row(root: Path, name: str, per_prompt: int, pixels, prompts: int = 3) -> Path:
    """A row folder (generation.jsonl + PNGs) whose image of (prompt p, sample s) is `pixels(p, s)` (uint8 HxWx3)."""
    d = root / name
    (d / "images").mkdir(parents=True)
    records = []
    for p in range(prompts):
        for s in range(per_prompt):
            i = len(records)
            Image.fromarray(np.asarray(pixels(p, s), dtype=np.uint8)).save(d / "images" / f"{i:06d}.png")
            records.append({"row": name, "index": i, "prompt_set": "toy-digits", "prompt_id": f"digit{p}",
                            "class_label": p, "seed": derive_seed(0, "toy-digits", f"digit{p}", s),
                            "image_path": f"images/{i:06d}.png"})
    (d / "generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def flat(value: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), value, dtype=np.uint8)


def random_alexnet_weights(path: Path, seed: int = 0) -> Path:
    """RANDOM (not ImageNet) AlexNet weights in torchvision's state-dict layout, where the real ones would be: the
    plumbing of LPIPS can be tested without the 233 MB download; its values mean nothing."""
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet(weights=None).state_dict(), path)
    return path


def read_metrics(row_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (row_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- known answers
def test_psnr_of_gaussian_noise_is_ten_log_one_over_its_variance(tmp_path):
    """Mid-grey plus N(0, sigma^2) noise, stored as 8-bit PNGs: PSNR = 10 log10(1 / MSE), MSE = sigma^2 + q^2 / 12 (q
    = 1/255: the rounding to 8 bits adds a uniform error, independent of the noise since sigma is 12.75 levels).
    The per-image MSE is a mean of N = 32 x 32 x 3 squared normals: relative standard error sqrt(2 / N), i.e.
    (10 / ln 10) sqrt(2 / N) = 0.111 dB of PSNR; each image must lie within 5 of those."""
    sigma, base = 0.05, 128
    rng = np.random.default_rng(0)
    noisy = [np.clip(np.round((base / 255 + rng.normal(0, sigma, (SIZE, SIZE, 3))) * 255), 0, 255) for _ in range(4)]
    ref = write_row(tmp_path, "ref", 4, lambda p, s: flat(base), prompts=1)
    row = write_row(tmp_path, "noisy", 4, lambda p, s: noisy[s], prompts=1)
    paths = sorted((row / "images").glob("*.png"))
    values = fidelity(paths, sorted((ref / "images").glob("*.png")), ["psnr_ref"])["psnr_ref"]
    expected = 10 * math.log10(1 / (sigma ** 2 + (1 / 255) ** 2 / 12))
    tol = 5 * (10 / math.log(10)) * math.sqrt(2 / (SIZE * SIZE * 3))
    assert np.all(np.abs(values - expected) < tol), (values, expected, tol)
    # and it is 10 log10(1 / mean squared error) of the stored 8-bit pixels (float64 squared errors; torchmetrics
    # takes ln 10 in float32: relative rounding up to 2^-24 = 6e-8)
    direct = [10 * math.log10(1 / np.mean((n / 255 - base / 255) ** 2)) for n in noisy]
    assert values == pytest.approx(direct, rel=1e-7)


def test_identical_images_give_the_8_bit_psnr_ceiling_and_ssim_one(tmp_path):
    """Identical images: MSE 0 would give PSNR = inf; the value is the PSNR of the smallest difference 8-bit images
    can have (one level in one value), so no finite PSNR of such images is higher and row means stay finite."""
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 256, (2, 3, SIZE, SIZE)) / 255.0)  # float64: exact 8-bit levels

    def nudged(x: torch.Tensor, pixels: int) -> torch.Tensor:  # one level off in the first `pixels` values of row 0
        y = x.clone()
        v = y[:, 0, 0, :pixels]
        y[:, 0, 0, :pixels] = torch.where(v < 0.5, v + 1 / 255, v - 1 / 255)
        return y

    ceiling = 10 * math.log10(255 ** 2 * 3 * SIZE * SIZE)
    assert psnr(img, img).tolist() == pytest.approx([ceiling] * 2, abs=1e-9)
    # torchmetrics' ln 10 in float32 (relative 6e-8) for finite values
    assert psnr(nudged(img, 1), img).tolist() == pytest.approx([ceiling] * 2, rel=1e-7)
    assert psnr(nudged(img, 2), img).tolist() == pytest.approx([ceiling - 10 * math.log10(2)] * 2, rel=1e-7)
    # SSIM of identical images is 1 up to float32 rounding of the window sums (121 terms, ~1e-7 each)
    assert ssim(img, img).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    """Flat images have no variance, so SSIM's contrast-structure term is C2 / C2 = 1 and SSIM = (2ab + C1) /
    (a^2 + b^2 + C1), C1 = (0.01 x data range)^2, whatever the window; float32 tolerance as above."""
    a, b = 128 / 255, 64 / 255
    x, y = torch.full((1, 3, SIZE, SIZE), a), torch.full((1, 3, SIZE, SIZE), b)
    c1 = 0.01 ** 2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-5)
    assert ssim(x, x + 0.02 * torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))).item() < 0.99


def test_lpips_with_random_alexnet_weights_equals_the_package_loading_the_same_file(tmp_path, monkeypatch, one_thread):
    """Plumbing only (RANDOM backbone weights): our offline loader puts the file's AlexNet weights where lpips's own
    `LPIPS(net="alex")` puts torchvision's, so the two give the same distances; identical images give 0."""
    import lpips

    weights = random_alexnet_weights(asset_location("lpips-alexnet", tmp_path / "cache"))
    assert weights.name == ALEXNET_URL.rsplit("/", 1)[1]  # the file torchvision's hub cache would hold
    ours = load_lpips("cpu", cache_dir=tmp_path / "cache")
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / weights.name).write_bytes(weights.read_bytes())  # present: torch.hub does not download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    theirs = lpips.LPIPS(net="alex", verbose=False).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.no_grad():
        expected = theirs(a, b, normalize=True).reshape(-1)
        got = ours(a, b, normalize=True).reshape(-1)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert (got > 0).all() and ours(a, a, normalize=True).abs().max().item() == 0.0
    assert load_lpips("cpu", cache_dir=tmp_path / "cache") is ours  # one load per process, however many rows


def test_alexnet_asset_is_torchvisions_imagenet_file():
    from torchvision.models import AlexNet_Weights

    assert ALEXNET_URL == AlexNet_Weights.IMAGENET1K_V1.url


# ------------------------------------------------------------------------------------------------- pairing
def test_rows_pair_by_prompt_and_seed_across_different_image_counts(tmp_path):
    """A row with 2 samples per prompt against a reference with 5: image i of the row is (prompt i // 2, sample
    i % 2), image i of the reference another one. The row's image of (p, s) is its reference's plus k = s + 1 levels,
    so its PSNR is 20 log10(255 / k) only if it is paired with the same (prompt, seed)."""
    write_row(tmp_path, "ref", 5, lambda p, s: flat(40 * p + 7 * s))
    row = write_row(tmp_path, "row", 2, lambda p, s: flat(40 * p + 7 * s + s + 1))
    summary = compute_row_metrics(row, "psnr_ref,ssim_ref", reference_dir=tmp_path / "ref")
    got = [r["psnr_ref"] for r in read_metrics(row)]
    assert got == pytest.approx([20 * math.log10(255 / (s + 1)) for p in range(3) for s in range(2)], rel=1e-7)
    assert summary["metrics"]["psnr_ref"]["n"] == 6 and summary["metrics"]["psnr_ref"]["reference"] == "ref"
    lo, hi = summary["metrics"]["psnr_ref"]["ci_low"], summary["metrics"]["psnr_ref"]["ci_high"]
    assert min(got) <= lo <= summary["metrics"]["psnr_ref"]["value"] <= hi <= max(got)


def test_a_row_missing_images_of_its_reference_fails_naming_both_rows(tmp_path, capsys):
    write_row(tmp_path, "t1_baseline-20", 2, lambda p, s: flat(10))
    row = write_row(tmp_path, "t1_ilf", 3, lambda p, s: flat(12))  # sample 2 of every prompt has no reference
    seed = derive_seed(0, "toy-digits", "digit0", 2)
    code = main(["metrics", "--generation-dir", str(row), "--reference-dir", str(tmp_path / "t1_baseline-20"),
                 "--metrics", "toy_class_accuracy,psnr_ref"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'t1_ilf'" in err and "'t1_baseline-20'" in err and f"(prompt 'digit0', seed {seed})" in err
    assert "3 of its 9 images" in err
    assert not (row / "metrics.jsonl").exists() and not (row / "metrics_summary.json").exists()  # nothing written


def test_several_rows_in_one_process_and_the_reference_row_gets_no_value(tmp_path, capsys):
    """`ilf metrics` with three rows (one import, one LPIPS load; RANDOM AlexNet weights in the cache): the reference
    row compared with itself stores null (its perfect value would be PSNR inf), the others their values."""
    import os

    random_alexnet_weights(asset_location("lpips-alexnet", Path(os.environ["ILF_CACHE"])))
    ref = write_row(tmp_path, "ref", 2, lambda p, s: flat(100 + 10 * p))
    a = write_row(tmp_path, "a", 2, lambda p, s: flat(101 + 10 * p))
    b = write_row(tmp_path, "b", 1, lambda p, s: flat(90 + 10 * p))
    args = ["metrics", "--metrics", "psnr_ref,ssim_ref,lpips_ref", "--device", "cpu"]
    for d in (a, b, ref):
        args += ["--generation-dir", str(d), "--reference-dir", str(ref)]
    assert main(args) == 0
    sa, sb, sr = (json.loads((d / "metrics_summary.json").read_text())["metrics"] for d in (a, b, ref))
    assert sa["psnr_ref"]["value"] == pytest.approx(20 * math.log10(255)) and sa["psnr_ref"]["n"] == 6
    assert sb["psnr_ref"]["value"] == pytest.approx(20 * math.log10(255 / 10)) and sb["psnr_ref"]["n"] == 3
    assert sa["lpips_ref"]["value"] > 0 and sa["ssim_ref"]["value"] < 1
    assert all(sr[m]["value"] is None and sr[m]["n"] == 0 and sr[m]["reference"] == "ref" for m in sr)
    assert all(r["psnr_ref"] is None for r in read_metrics(ref))
    assert '"psnr_ref": null' in capsys.readouterr().out


def test_reference_metrics_need_a_reference_and_matching_counts(tmp_path, capsys):
    a = write_row(tmp_path, "a", 1, lambda p, s: flat(1))
    b = write_row(tmp_path, "b", 1, lambda p, s: flat(2))
    assert main(["metrics", "--generation-dir", str(a), "--metrics", "psnr_ref"]) == 2
    assert "--reference-dir" in capsys.readouterr().err
    assert main(["metrics", "--generation-dir", str(a), "--generation-dir", str(b), "--generation-dir", str(a),
                 "--reference-dir", str(a), "--reference-dir", str(b), "--metrics", "psnr_ref"]) == 2
    assert "2 --reference-dir for 3 --generation-dir" in capsys.readouterr().err


def test_lpips_without_its_weights_is_the_offline_error(tmp_path, capsys):
    with pytest.raises(MissingAssetError, match=r"ilf prefetch --metric-assets lpips-alexnet"):
        load_lpips("cpu", cache_dir=tmp_path / "empty")
    ref = write_row(tmp_path, "ref", 1, lambda p, s: flat(1))
    row = write_row(tmp_path, "row", 1, lambda p, s: flat(2))
    code = main(["metrics", "--generation-dir", str(row), "--reference-dir", str(ref), "--metrics", "lpips_ref"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ilf metrics: error: lpips-alexnet") and len(err.strip().splitlines()) == 1
    assert "ilf prefetch --metric-assets lpips-alexnet" in err and not (row / "metrics_summary.json").exists()
