"""FID with clean-fid (Parmar et al. 2022, `mode="clean"`) against named reference statistics.

Reference statistics are made once with clean-fid's `make_custom_stats` (all images of a folder,
Inception-v3 pool features, mean and covariance) and kept in the ILF cache as
`fid_stats/<name>_<mode>_custom_na.npz`, clean-fid's own file naming, where `<name>` spells the
data set and resolution: `mjhq30k_1024` (MJHQ-30K, 30,000 images at 1024 px) and
`imagenet_train_256` (your ImageNet train folder, ADM centre crop to 256 px as in DiT, a seeded
random 50,000-image subset by default). Generated images go through the same clean-fid resize
and features (`get_files_features`) and `frechet_distance`; the value carries its sample count.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ilf.errors import ILFConfigError
from ilf.metrics.assets import asset_location, require_asset
from ilf.metrics.common import check_paths, resolve_device

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): clean-fid's implementation."""
    from cleanfid.fid import frechet_distance as _fd

    return float(_fd(mu1, sigma1, mu2, sigma2))


def stats_file_stem(name: str, mode: str = "clean") -> str:
    """clean-fid's name for custom statistics: `<name>_<mode>_custom_na`."""
    if mode not in MODES:
        raise ILFConfigError("mode", mode, MODES)
    return f"{name}_{mode}_custom_na".lower()


def load_inception(device: str | torch.device | None = None, cache_dir: Path | None = None,
                   mode: str = "clean") -> FeatureFn:
    """clean-fid's Inception feature extractor for `mode`, with the network read from the cache."""
    from cleanfid.inception_torchscript import InceptionV3W

    if mode == "legacy_pytorch":
        raise ValueError("mode='legacy_pytorch' uses torchvision's Inception weights: use mode='clean'")
    path = require_asset("inception-fid", cache_dir)
    dev = resolve_device(device)
    model = InceptionV3W(str(path.parent), download=False, resize_inside=(mode == "legacy_tensorflow")).to(dev)
    return model.eval()


def image_features(image_paths: Sequence[str | Path], feature_extractor: FeatureFn, mode: str = "clean",
                   device: str | torch.device | None = None, batch_size: int = 32, num_workers: int = 0,
                   description: str = "FID features") -> np.ndarray:
    """clean-fid features of a list of image files (its resize for `mode`, then the extractor)."""
    from cleanfid.fid import get_files_features

    files = [str(p) for p in check_paths(image_paths)]
    return get_files_features(files, model=feature_extractor, num_workers=num_workers, batch_size=batch_size,
                              device=resolve_device(device), mode=mode, description=description)


def stats_from_features(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples), as clean-fid computes them."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def load_reference_stats(name: str, mode: str = "clean",
                         cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, stats name) of reference `name` from the cache."""
    stem = stats_file_stem(name, mode)
    path = asset_location(f"fid-stats:{name}", cache_dir).with_name(stem + ".npz")
    if not path.is_file():
        require_asset(f"fid-stats:{name}", cache_dir)  # raises MissingAssetError naming the fetch command
        raise FileNotFoundError(f"{path} (mode {mode}) is missing; make it with `ilf metrics --make-fid-ref {name}`")
    stats = np.load(path)
    return stats["mu"], stats["sigma"], stem


def fid(image_paths: Sequence[str | Path], reference: str, mode: str = "clean",
        device: str | torch.device | None = None, batch_size: int = 32, num_workers: int = 0,
        cache_dir: Path | None = None, feature_extractor: FeatureFn | None = None) -> tuple[float, int, str]:
    """(FID, number of generated images, reference stats name) of images against `reference`."""
    mu_ref, sigma_ref, stem = load_reference_stats(reference, mode, cache_dir)
    extractor = feature_extractor or load_inception(device, cache_dir, mode)
    feats = image_features(image_paths, extractor, mode, device, batch_size, num_workers, f"FID vs {stem}")
    mu, sigma = stats_from_features(feats)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref), len(feats), stem


def make_reference_stats(name: str, image_dir: Path, mode: str = "clean", num: int | None = None,
                         device: str | torch.device | None = None, batch_size: int = 64, num_workers: int = 0,
                         cache_dir: Path | None = None, feature_extractor: FeatureFn | None = None) -> Path:
    """clean-fid `make_custom_stats` over `image_dir`, stored as `fid_stats/<name>_<mode>_custom_na.npz`.

    clean-fid writes into its package folder and would fetch Inception itself: here it is handed the
    cached Inception (or `feature_extractor`) and the files are moved into the ILF cache.
    """
    import cleanfid
    from cleanfid import fid as cfid

    stem = stats_file_stem(name, mode)
    out = asset_location(f"fid-stats:{name}", cache_dir).with_name(stem + ".npz")
    if out.exists():
        raise FileExistsError(f"{out} already exists: delete it first to rebuild reference '{name}'")
    extractor = feature_extractor or load_inception(device, cache_dir, mode)
    pkg_stats = Path(cleanfid.__file__).parent / "stats"
    made = [pkg_stats / f"{stem}.npz", pkg_stats / f"{stem}_kid.npz"]
    for f in made:
        f.unlink(missing_ok=True)
    with mock.patch.object(cfid, "build_feature_extractor", lambda *a, **k: extractor):
        cfid.make_custom_stats(name, str(image_dir), num=num, mode=mode, num_workers=num_workers,
                               batch_size=batch_size, device=resolve_device(device))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(made[0]), out)
    made[1].unlink(missing_ok=True)  # KID features: not used, and large
    return out


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's centre crop (used by DiT's data pipeline): box-halve, bicubic resize, centre crop."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y, x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[y:y + image_size, x:x + image_size]


def prepare_reference_images(src_dir: Path, out_dir: Path, resolution: int = 256, num: int | None = 50_000,
                             seed: int = 0) -> list[Path]:
    """Write a seeded random subset (`num`, None = all) of `src_dir`'s images, centre-cropped, as PNGs."""
    files = sorted(p for p in Path(src_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"ref_images={src_dir}: no image files found")
    if num is not None and num < len(files):
        files = sorted(random.Random(seed).sample(files, num))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, f in enumerate(tqdm(files, desc=f"reference images {resolution}px", unit="img")):
        dst = out_dir / f"{i:07d}.png"
        if not dst.exists():
            Image.fromarray(center_crop_arr(Image.open(f).convert("RGB"), resolution)).save(dst)
        written.append(dst)
    return written
