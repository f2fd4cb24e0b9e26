"""`ilf precompute`: encode training data once into sharded safetensors (VAE latents + caption embeddings)."""
from __future__ import annotations

import argparse

from ._training_args import add_config_arguments, load_config

DESCRIPTION = """Encode the data of a training YAML once: VAE latents and T5 caption embeddings (PixArt) or class
labels (DiT) into <out>/shard_XXXXX.safetensors, so `ilf train` never runs the VAE or the text encoder.
Each shard is written atomically; re-running the same command resumes (existing shards are skipped).
Under torchrun, shards are spread over the ranks.

  ilf precompute --config configs/train/toy_t2i.yaml --out results/latents/toy_t2i
  ilf precompute --config configs/train/pixart_alpha_512.yaml --out /scratch/latents/a512 --set data.path=/data/pairs
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "data.path=/data/pairs")
    parser.add_argument("--out", default=None, help="latent folder (default: the config's data.latents_dir)")


def run(args: argparse.Namespace) -> int:
    from ilf.errors import ILFConfigError
    from ilf.train import precompute

    config = load_config(args)
    out = args.out or config.data.latents_dir
    if not out:
        raise ILFConfigError("--out", None, "a folder for the latents (or data.latents_dir in the config)")
    meta = precompute(config, out, progress=not args.no_progress)
    print(f"{meta['num_samples']} samples ({meta['task']}, latents {meta['latent_shape']}) in {out}")
    return 0
