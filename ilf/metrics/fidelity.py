"""Fidelity to a reference row, per image: PSNR and SSIM (torchmetrics) and LPIPS (lpips, AlexNet).

Each image of a row is compared with the image of its reference row (`ilf.harness.reference`: the row's
`reference_row`, else its group's baseline with the most steps) that has the same `(prompt_id, seed)`, i.e. the
same prompt and initial noise; rows with fewer images per prompt than their reference pair on the ones they have.
Pixels are read from the stored PNGs as RGB in [0, 1].

- `psnr_ref`: `torchmetrics.functional.image.peak_signal_noise_ratio` (data range 1, per image), in dB. Identical
  images (MSE 0, PSNR infinite) get the PSNR of the smallest difference 8-bit images can have, one level in one
  value: 10 log10(255^2 C H W) (83.1 dB at 32x32 RGB), so a row's mean stays finite and no finite value is
  higher (squared errors are taken in float64 from the 8-bit levels).
- `ssim_ref`: `torchmetrics.functional.image.structural_similarity_index_measure` (Gaussian window 11, sigma 1.5,
  data range 1), per image; 1 for identical images.
- `lpips_ref`: `lpips.LPIPS(net="alex")` (v0.1, cache-dit's choice) on inputs scaled to [-1, 1]; 0 for identical
  images. Its linear layers ship with the package; the AlexNet backbone is torchvision's ImageNet weights, read
  from the ILF cache (`ilf prefetch --metric-assets lpips-alexnet`), never downloaded here.
A row whose reference's images are its own (the reference row itself) gets no value: `ilf.metrics` writes null.

Video (`clip_fidelity`): a clip is compared with its reference clip frame by frame (frame k with frame k), and
its value is the mean over its frames of the per-frame metric (video PSNR as the mean of frame PSNRs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ilf.harness.reference import REFERENCE_METRICS
from ilf.metrics.assets import require_asset
from ilf.metrics.common import batches, resolve_device

__all__ = ["REFERENCE_METRICS", "ReferenceRow", "pair_with_reference", "psnr", "ssim", "load_lpips", "lpips_distance",
           "fidelity", "clip_fidelity"]


@dataclass(frozen=True)
class ReferenceRow:
    """The row a row's images are compared with: its name, folder and generation records."""

    name: str
    row_dir: Path
    records: list[dict[str, Any]]


def _key(record: dict[str, Any]) -> tuple[str, str]:
    return str(record.get("prompt_id")), str(record.get("seed"))


def pair_with_reference(records: Sequence[dict[str, Any]], reference: ReferenceRow, row: str) -> list[Path]:
    """The reference image (or clip) of every record: the one with the same `(prompt_id, seed)`.

    Args:
        records: The row's generation records.
        reference: The reference row (any number of images; only the ones paired are read).
        row: The row's name, for messages.

    Returns:
        One image path (a video row: clip folder) per record, in the records' order.

    Raises:
        ValueError: an image of the row has no reference image of the same prompt and seed (the message names both
            rows and a missing pair), a reference image file is missing, a key repeats in the reference, or one
            row holds clips and the other images.
    """
    from ilf.harness.image_records import sample_path

    index: dict[tuple[str, str], dict[str, Any]] = {}
    for r in reference.records:
        if index.setdefault(_key(r), r) is not r:
            raise ValueError(f"reference row {reference.name!r} has two images with (prompt_id, seed) = {_key(r)}")
    missing = [_key(r) for r in records if _key(r) not in index]
    if missing:
        (p, s) = missing[0]
        raise ValueError(f"row {row!r} cannot be compared with its reference row {reference.name!r}: {len(missing)} of "
                         f"its {len(records)} images have no image of the same prompt and seed there, e.g. (prompt "
                         f"{p!r}, seed {s}); generate {reference.name!r} with these prompts and at least as many "
                         f"images per prompt, or name another reference_row")
    kinds = {bool(r.get("clip_path")) for r in records}, {bool(index[_key(r)].get("clip_path")) for r in records}
    if kinds[0] != kinds[1]:
        what = {True: "clips", False: "images"}
        raise ValueError(f"row {row!r} holds {what[kinds[0].pop()]}, its reference row {reference.name!r} "
                         f"{what[kinds[1].pop()]}: name a reference_row of the same backbone")
    paths = [sample_path(reference.row_dir, index[_key(r)]) for r in records]
    absent = [p for p in paths if not p.exists()]
    if absent:
        raise ValueError(f"reference row {reference.name!r}: {len(absent)} image files of its records are missing, "
                         f"e.g. {absent[0]} (regenerate the row)")
    return paths


def _load(paths: Sequence[Path]) -> torch.Tensor:
    """(N, 3, H, W) uint8 pixels of PNGs (as RGB)."""
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (N, C, H, W) images in [0, 1]; identical images get the 8-bit ceiling (module doc)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    values = peak_signal_noise_ratio(images.double(), reference.double(), data_range=1.0, reduction="none",
                                     dim=(1, 2, 3))
    ceiling = 10.0 * math.log10(255.0 ** 2 * math.prod(images.shape[1:]))
    return torch.where(torch.isinf(values), torch.full_like(values, ceiling), values)


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, data range 1) of (N, C, H, W) images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(images, reference, data_range=1.0, reduction="none").reshape(-1)


_LPIPS: dict[tuple[str, str], torch.nn.Module] = {}  # one model per process (several rows, one load)


def load_lpips(device: str | torch.device | None = None, cache_dir: Path | None = None,
               alexnet_weights: str | Path | None = None) -> torch.nn.Module:
    """`lpips.LPIPS(net="alex")` with its AlexNet backbone read from the ILF cache (never downloaded).

    Args:
        device: Torch device (default: CUDA when available).
        cache_dir: The ILF cache (default: `$ILF_CACHE`).
        alexnet_weights: A torchvision AlexNet state dict file instead of the cached ImageNet weights.

    Returns:
        The LPIPS module in eval mode; cached per (device, weights file) for the process.

    Raises:
        MissingAssetError: the AlexNet weights are not in the cache (`ilf prefetch --metric-assets lpips-alexnet`).
    """
    import warnings

    import lpips

    path = Path(alexnet_weights) if alexnet_weights is not None else require_asset("lpips-alexnet", cache_dir)
    dev = resolve_device(device)
    key = (str(dev), str(Path(path).resolve()))
    if key not in _LPIPS:
        with warnings.catch_warnings():  # lpips builds torchvision's alexnet with the deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)  # backbone set below
        state = torch.load(path, map_location="cpu", weights_only=True)
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        own = model.net.state_dict()  # "slice2.3.weight": the module at index 3 of torchvision's alexnet.features
        missing = [k for k in own if k.split(".", 1)[1] not in features]
        if missing:
            raise ValueError(f"{path}: not a torchvision AlexNet state dict "
                             f"(no features.{missing[0].split('.', 1)[1]})")
        model.net.load_state_dict({k: features[k.split(".", 1)[1]] for k in own})
        _LPIPS[key] = model.to(dev).eval()
    return _LPIPS[key]


@torch.no_grad()
def lpips_distance(model: torch.nn.Module, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of (N, C, H, W) images in [0, 1] (scaled to [-1, 1] by lpips)."""
    dev = next(model.parameters()).device
    return model(images.to(dev), reference.to(dev), normalize=True).reshape(-1).cpu()


def fidelity(image_paths: Sequence[str | Path], reference_paths: Sequence[str | Path], names: Sequence[str],
             device: str | torch.device | None = None, batch_size: int = 16, cache_dir: Path | None = None,
             lpips_model: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Per-image `psnr_ref` / `ssim_ref` / `lpips_ref` of images against their paired reference images.

    Args:
        image_paths: The row's images.
        reference_paths: The reference image of each (same length; `pair_with_reference`).
        names: Which of `REFERENCE_METRICS` to compute.
        device: Torch device for LPIPS (PSNR and SSIM run on the CPU).
        batch_size: Image pairs per batch.
        cache_dir: The ILF cache (LPIPS backbone).
        lpips_model: An LPIPS module to use instead of `load_lpips` (tests).

    Returns:
        `{name: float64 array, one value per image}`.

    Raises:
        ValueError: unknown names, unequal lengths, or an image and its reference differ in size.
    """
    unknown = [n for n in names if n not in REFERENCE_METRICS]
    if unknown or len(image_paths) != len(reference_paths):
        raise ValueError(f"fidelity: names {list(names)} (allowed {REFERENCE_METRICS}), {len(image_paths)} images and "
                         f"{len(reference_paths)} reference images")
    model = (lpips_model or load_lpips(device, cache_dir)) if "lpips_ref" in names else None
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    pairs = list(zip(map(Path, image_paths), map(Path, reference_paths)))
    for batch in batches(pairs, batch_size):
        a8, b8 = _load([p for p, _ in batch]), _load([q for _, q in batch])
        if a8.shape != b8.shape:
            raise ValueError(f"{batch[0][0]} and its reference image {batch[0][1]} differ in size "
                             f"({tuple(a8.shape[1:])} vs {tuple(b8.shape[1:])}): not the same backbone and resolution")
        if "psnr_ref" in out:  # float64 from the 8-bit levels: exact squared errors
            out["psnr_ref"].append(psnr(a8.double() / 255, b8.double() / 255).numpy())
        a, b = a8.float() / 255, b8.float() / 255
        if "ssim_ref" in out:
            out["ssim_ref"].append(ssim(a, b).double().numpy())
        if model is not None:
            out["lpips_ref"].append(lpips_distance(model, a, b).double().numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def clip_fidelity(clip_dirs: Sequence[str | Path], reference_dirs: Sequence[str | Path], names: Sequence[str],
                  **kwargs: Any) -> dict[str, np.ndarray]:
    """Per-clip `psnr_ref` / `ssim_ref` / `lpips_ref`: each frame against the same frame of the reference clip,
    averaged over the clip's frames.

    Args:
        clip_dirs: The row's clips (folders written by `ilf.harness.clip_records.write_clip`).
        reference_dirs: The reference clip of each (same length, same frame count and size).
        names: Which of `REFERENCE_METRICS` to compute.
        **kwargs: passed to `fidelity` (`device`, `batch_size`, `cache_dir`, `lpips_model`).

    Returns:
        `{name: float64 array, one value per clip}`: the mean of the per-frame values.

    Raises:
        ValueError: unequal lengths, a clip and its reference differ in frame count or frame size, unknown names.
    """
    from ilf.harness.clip_records import clip_frames

    if len(clip_dirs) != len(reference_dirs):
        raise ValueError(f"clip_fidelity: {len(clip_dirs)} clips and {len(reference_dirs)} reference clips")
    frames: list[Path] = []
    references: list[Path] = []
    counts = []
    for clip, reference in zip(clip_dirs, reference_dirs):
        a, b = clip_frames(clip), clip_frames(reference)
        if len(a) != len(b) or not a:
            raise ValueError(f"{clip} has {len(a)} frames and its reference clip {reference} {len(b)}: not the same "
                             "backbone and clip length")
        frames += a
        references += b
        counts.append(len(a))
    per_frame = fidelity(frames, references, names, **kwargs)
    bounds = np.cumsum(counts)[:-1]
    return {n: np.array([v.mean() for v in np.split(values, bounds)]) for n, values in per_frame.items()}
