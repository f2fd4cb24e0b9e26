"""`ilf precompute`: encode training data once into sharded safetensors (VAE latents + caption embeddings)."""
from __future__ import annotations

import argparse

NAME = "precompute"
HELP = "encode a training config's images/captions into sharded latents (resumable)"
DESCRIPTION = """Encode the data of a training YAML once: VAE latents and T5 caption embeddings (PixArt) or class
labels (DiT) into <out>/shard_XXXXX.safetensors, so `ilf train` never runs the VAE or the text encoder.
Each shard is written atomically; re-running the same command resumes (existing shards are skipped).
Under torchrun, shards are spread over the ranks.

  ilf precompute --config configs/train/toy_t2i.yaml --out results/latents/toy_t2i
  ilf precompute --config configs/train/pixart_alpha_512.yaml --out /scratch/latents/a512 --set data.path=/data/pairs
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (configs/train/<name>.yaml)")
    parser.add_argument("--out", default=None, help="latent folder (default: the config's data.latents_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, dotted keys (e.g. data.path=/data/pairs); repeatable")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from ilf.errors import ILFConfigError
    from ilf.train import load_train_config, parse_overrides, precompute

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_train_config(args.config, parse_overrides(args.set))
    out = args.out or config.data.latents_dir
    if not out:
        raise ILFConfigError("--out", None, "a folder for the latents (or data.latents_dir in the config)")
    meta = precompute(config, out, progress=not args.no_progress)
    print(f"{meta['num_samples']} samples ({meta['task']}, latents {meta['latent_shape']}) in {out}")
    return 0
