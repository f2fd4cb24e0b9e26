"""Helpers for the video training tests (no tests here): a tiny video-caption folder (clips as PNG frame folders and
as .mp4 files) and a tiny training config for the tiny `WanPipeline` with its tiny umT5 (tests/helpers/tiny_wan.py).

Clips are 5 frames of 40 x 48 pixels, so the config's 32 x 32 crops and the Wan VAE's 4x temporal / 8x spatial
compression give latents (4, 2, 4, 4): 8 video tokens per clip at the (1, 2, 2) patch size.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilf.config import FeedbackConfig
from ilf.train.config import DataConfig, OptimConfig, TrainConfig

CAPTIONS = ["a red ball rolls to the left", "a blue square slides up", "a green circle grows",
            "a yellow star spins", "two red balls bounce", "a blue ball falls down"]
FRAMES, HEIGHT, WIDTH = 5, 32, 32  # the training clips (F = 4k + 1)
SOURCE_SIZE = (48, 40)  # (width, height) of the frames on disk: resized and centre-cropped to 32 x 32
MAX_TOKENS = 16  # umT5 tokens per caption (the longest caption has 6 words + </s>)
LOOP = (1, 3)  # of the tiny Wan's 6 blocks


def clip_frames(index: int, num_frames: int = FRAMES + 2) -> np.ndarray:
    """(num_frames, H, W, 3) uint8: a smooth moving pattern per clip (a few more frames than one clip takes)."""
    w, h = SOURCE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for f in range(num_frames):
        phase = 0.6 * f + index
        r = 127.5 + 120 * np.sin(xx / 7.0 + phase)
        g = 127.5 + 120 * np.cos(yy / 5.0 - phase * (1 + index % 3))
        b = 127.5 + 120 * np.sin((xx + yy) / 9.0 + index)
        frames.append(np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def write_mp4(path: Path, frames: np.ndarray, fps: int = 16) -> None:
    """Write frames (F, H, W, 3) uint8 as a lossless H.264 RGB .mp4 (PyAV)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"crf": "0"}  # lossless RGB (libx264rgb, crf 0): the decoded frames are the frames written
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video_folder(root: Path, mp4: tuple[int, ...] = ()) -> Path:
    """A `videos` dataset: one clip per caption in `CAPTIONS`, as a folder of PNG frames, or as an .mp4 for the
    indices in `mp4`; `captions.jsonl` lists them."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, caption in enumerate(CAPTIONS):
        frames = clip_frames(i)
        if i in mp4:
            name = f"clip_{i:02d}.mp4"
            write_mp4(root / name, frames)
        else:
            name = f"clip_{i:02d}"
            (root / name).mkdir(exist_ok=True)
            for f, arr in enumerate(frames):
                Image.fromarray(arr).save(root / name / f"{f:04d}.png")
        lines.append(json.dumps({"video": name, "caption": caption}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def video_pipeline(num_layers: int = 6, seed: int = 0):
    """The tiny WanPipeline with a tiny umT5 over `CAPTIONS`, a VAE with non-trivial latents_mean / latents_std."""
    from tiny_wan import tiny_wan_text_pipeline

    pipe = tiny_wan_text_pipeline(CAPTIONS, num_layers=num_layers, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    z = pipe.vae.config.z_dim
    pipe.vae.register_to_config(latents_mean=(torch.randn(z, generator=g) * 0.2).tolist(),
                                latents_std=(0.5 + torch.rand(z, generator=g)).tolist())
    return pipe


def video_config(name: str, data_path: str | Path, latents_dir: str | Path, **kw) -> TrainConfig:
    """A tiny training config for the tiny Wan (the pipeline is passed to `precompute` / `train` directly)."""
    data = DataConfig(source="videos", path=str(data_path), latents_dir=str(latents_dir), shard_size=4, batch_size=2,
                      max_sequence_length=MAX_TOKENS, resolution=HEIGHT, width=WIDTH, num_frames=FRAMES)
    cfg = dict(name=name, backbone=name, feedback=FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]), distill="fast",
               data=data, optim=OptimConfig(lr=1e-2), global_batch_size=4, micro_batch_size=2, iterations=4,
               checkpoint_interval=100, log_interval=1, device="cpu", teacher_steps=2)
    cfg.update(kw)
    return TrainConfig(**cfg).validate()
