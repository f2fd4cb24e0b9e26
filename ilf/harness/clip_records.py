"""A generated video clip and its record: the clip is a folder of PNG frames with a manifest, written whole.

    clips/{index:06d}/0000.png ... {F-1:04d}.png   the frames, in order
    clips/{index:06d}/clip.json                     {"seed", "fps", "frames": [{"path", "bytes", "sha256"}, ...]}

The folder is built under a hidden temporary name beside its target, every file flushed to the disk, and renamed
onto the target only when complete, so a reader sees the whole clip or none of it (a clip that was there is
replaced whole). The record holds the frame count and the manifest's size and sha256 (`CLIP_FIELDS`); the
manifest holds each frame's, so `clip_problem` checks every byte of the clip against its record. PNG frames are
lossless, so per-frame metrics read exactly what the pipeline returned.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..io import fsync_dir, sha256_file, write_bytes_atomic

CLIP_FIELDS = ("clip_frames", "clip_bytes", "clip_sha256")
# The metrics a video row can have: CLIP score and the reference metrics, per frame and averaged per clip.
VIDEO_METRICS = ("clip_score", "psnr_ref", "ssim_ref", "lpips_ref")
MANIFEST = "clip.json"


def _frames_as_pil(frames: Any) -> list[Any]:
    """PIL frames from a list of PIL images or an (F, H, W, C) array in [0, 1] (`output_type="np"`)."""
    if len(frames) == 0:
        raise ValueError("a clip needs at least one frame")
    if isinstance(frames, Sequence) and hasattr(frames[0], "save"):
        return list(frames)
    from diffusers.utils import numpy_to_pil

    import numpy as np

    array = np.asarray(frames)
    if array.ndim != 4:
        raise ValueError(f"a clip is (frames, height, width, channels) or a list of PIL frames, got shape "
                         f"{array.shape}")
    return numpy_to_pil(array)


def write_clip(path: str | Path, frames: Any, seed: int, fps: int = 16) -> dict[str, Any]:
    """Write one clip as a folder of PNG frames and its manifest, atomically: complete or absent.

    Args:
        path: the clip's folder (e.g. `<row_dir>/clips/000042`); an existing clip there is replaced whole.
        frames: the clip as the pipeline returns one video: a list of PIL images (`output_type="pil"`) or a
            (frames, height, width, 3) array in [0, 1] (`output_type="np"`, diffusers' `numpy_to_pil` rounding).
        seed: the seed its starting noise was drawn from (kept in the manifest).
        fps: the frame rate to play it at (Wan 2.1: 16).

    Returns:
        The record fields: `{"clip_frames": int, "clip_bytes": int, "clip_sha256": str}` (the manifest's size
        and sha256; the manifest holds every frame's).

    Raises:
        ValueError: `frames` is empty or not a clip.

    Example:
        ```py
        video = pipe(prompt_embeds=..., output_type="np").frames[0]  # (81, 480, 832, 3)
        rec = {"seed": seed, "clip_path": "clips/000000", **write_clip(row_dir / "clips/000000", video, seed)}
        ```
    """
    images = _frames_as_pil(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        entries = []
        for k, image in enumerate(images):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
            write_bytes_atomic(tmp / f"{k:04d}.png", data)  # flushed to the disk
            entries.append({"path": f"{k:04d}.png", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        manifest = (json.dumps({"seed": int(seed), "fps": int(fps), "frames": entries}, indent=1, sort_keys=True)
                    + "\n").encode()
        write_bytes_atomic(tmp / MANIFEST, manifest)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are ordinary folders
        old = None
        if path.exists():  # a folder cannot be renamed onto a non-empty one: move the old clip aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "clip")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"clip_frames": len(entries), "clip_bytes": len(manifest),
            "clip_sha256": hashlib.sha256(manifest).hexdigest()}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a clip folder written by `write_clip` (`seed`, `fps`, `frames`)."""
    return json.loads((Path(path) / MANIFEST).read_text())


def clip_problem(path: str | Path, record: dict[str, Any]) -> str | None:
    """What is wrong with a recorded clip, or None when its manifest and every frame match.

    Args:
        path: the clip folder the record names.
        record: its generation record, with `CLIP_FIELDS` (and `seed`, which the manifest must repeat).

    Returns:
        None, or a short reason ("is missing", "frame 0003.png does not match its sha256", ...).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "is missing"
    if manifest_path.stat().st_size != record.get("clip_bytes") or sha256_file(manifest_path) != record.get(
            "clip_sha256"):
        return "has a manifest that does not match its record"
    manifest = read_manifest(path)
    if "seed" in record and manifest["seed"] != record["seed"]:
        return f"was drawn from seed {manifest['seed']}, its record says {record['seed']}"
    if len(manifest["frames"]) != record.get("clip_frames"):
        return f"has {len(manifest['frames'])} frames, its record says {record.get('clip_frames')}"
    for frame in manifest["frames"]:
        file = path / frame["path"]
        if not file.is_file():
            return f"frame {frame['path']} is missing"
        if file.stat().st_size != frame["bytes"] or sha256_file(file) != frame["sha256"]:
            return f"frame {frame['path']} does not match its sha256"
    return None


def clip_frames(path: str | Path) -> list[Path]:
    """The frame files of a clip folder, in order (e.g. for per-frame metrics)."""
    return [Path(path) / f["path"] for f in read_manifest(path)["frames"]]
