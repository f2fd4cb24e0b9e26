"""Helpers for the training tests (no tests here): tiny stock pipelines, tiny configs, and the DDP worker.

    torchrun --nproc_per_node 2 tests/helpers/train_utils.py <task> <latents_dir> <run_dir> <global_batch> <micro>
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import DiTPipeline, PixArtAlphaPipeline

from tiny import dpm, tiny_dit, tiny_pixart, tiny_vae  # noqa: E402

from ilf.config import FeedbackConfig  # noqa: E402
from ilf.train.config import DataConfig, OptimConfig, TrainConfig  # noqa: E402

NUM_LAYERS = 5
LOOP = (1, 3)


def tiny_train_pipeline(task: str, seed: int = 0):
    """A stock PixArtAlphaPipeline (toy caption encoder, tiny VAE) or DiTPipeline around a 5-block transformer."""
    if task == "c2i":
        return DiTPipeline(transformer=tiny_dit(NUM_LAYERS, seed), vae=tiny_vae(seed), scheduler=dpm())
    from ilf.toy.encoder import ENCODER_CONFIG, build_caption_encoder

    tokenizer, encoder = build_caption_encoder(seed)
    return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=tiny_vae(seed),
                               transformer=tiny_pixart(NUM_LAYERS, seed, caption_channels=ENCODER_CONFIG["d_model"]),
                               scheduler=dpm())


def tiny_config(task: str, latents_dir: str | Path, **kw) -> TrainConfig:
    data = DataConfig(source="toy-shapes" if task == "t2i" else "toy-digits", latents_dir=str(latents_dir),
                      num_samples=12, shard_size=5, batch_size=4, max_sequence_length=12)
    cfg = dict(name=f"tiny_{task}", backbone=f"tiny-{task}", feedback=FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]),
               distill="fast", data=data, optim=OptimConfig(lr=1e-3), global_batch_size=4, micro_batch_size=2,
               iterations=4, checkpoint_interval=2, log_interval=1, device="cpu")
    cfg.update(kw)
    return TrainConfig(**cfg).validate()


if __name__ == "__main__":  # DDP worker
    task, latents, run, gb, mb = sys.argv[1:6]
    torch.set_num_threads(1)
    from ilf.train import train

    cfg = tiny_config(task, latents, global_batch_size=int(gb), micro_batch_size=int(mb), iterations=3,
                      checkpoint_interval=3)
    train(cfg, run, pipeline=tiny_train_pipeline(task), progress=False)
