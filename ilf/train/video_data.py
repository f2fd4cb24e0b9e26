"""The `videos` training source: clips (video files or folders of frame images) with captions, as pixels for
`ilf precompute` (text-to-video Wan; `ilf.train.video`).

A folder with `captions.jsonl`, one record per clip, {"video": "relative/path.mp4" or a frame folder, "caption":
"..."} (`ilf.train.data.read_caption_index`). A clip gives its first `num_frames` frames, every `frame_stride`-th
(a video file decoded with PyAV, a folder's images sorted by name), resized on the short side and centre-cropped
to (height, width) by diffusers' `VideoProcessor`, the processor WanPipeline uses: (3, F, H, W) in [-1, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.video_processor import VideoProcessor
from PIL import Image

from .config import DataConfig
from .data import IMAGE_EXTENSIONS, read_caption_index

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def read_frames(path: Path, num_frames: int, stride: int = 1) -> list[Image.Image]:
    """Frames 0, stride, 2 stride, ... (num_frames of them) of a clip, as RGB PIL images.

    Args:
        path: a folder of frame images (sorted by file name) or a video file (decoded with PyAV).
        num_frames: F, the frames to return.
        stride: the step between the frames taken.

    Returns:
        F RGB images.

    Raises:
        ValueError: the clip has fewer than (F - 1) stride + 1 frames.
    """
    need = (num_frames - 1) * stride + 1
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(files) < need:
            raise ValueError(f"clip {path} has {len(files)} frames; {num_frames} frames at stride {stride} need {need}")
        frames = []
        for p in files[:need:stride]:
            with Image.open(p) as im:
                frames.append(im.convert("RGB"))
        return frames
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == need:
                break
    if len(frames) < need:
        raise ValueError(f"clip {path} has {len(frames)} frames; {num_frames} frames at stride {stride} need {need}")
    return [f.to_image().convert("RGB") for f in frames[::stride]]


def clip_pixels(frames: list[Image.Image], height: int, width: int) -> torch.Tensor:
    """The frames resized on the short side and centre-cropped to (height, width), as (3, F, H, W) in [-1, 1]:
    diffusers' `VideoProcessor.preprocess_video(frames, height, width, resize_mode="crop")`, the processor
    `WanPipeline` builds (`vae_scale_factor` 8, Lanczos resampling)."""
    return _processor().preprocess_video(frames, height, width, resize_mode="crop")[0]


def _processor() -> VideoProcessor:
    return VideoProcessor(vae_scale_factor=8)  # WanPipeline's (vae_scale_factor_spatial); explicit sizes are passed


class VideoSourceDataset(torch.utils.data.Dataset):
    """Pixels (3, F, H, W) and caption of every clip of a `videos` folder (module doc), in the index's order."""

    task = "t2v"

    def __init__(self, cfg: DataConfig, height: int, width: int, num_frames: int):
        self.cfg, self.height, self.width, self.num_frames = cfg, height, width, num_frames
        self.paths, self.captions, index = read_caption_index(Path(cfg.path), "video")
        if cfg.num_samples is not None:
            self.paths, self.captions = self.paths[:cfg.num_samples], self.captions[:cfg.num_samples]
        if not self.paths:
            raise ValueError(f"data.path={cfg.path!r}: the videos dataset is empty (no clips listed in {index})")
        missing = [p for p in self.paths[:1000]
                   if not (p.is_dir() or (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} clip(s) named in {index} are neither a frame folder nor a video "
                                    f"file ({', '.join(VIDEO_EXTENSIONS)}), e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        frames = read_frames(self.paths[i], self.num_frames, self.cfg.frame_stride)
        return {"pixels": clip_pixels(frames, self.height, self.width), "caption": self.captions[i], "index": i}
