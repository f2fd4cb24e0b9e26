"""Arguments shared by `ilf precompute` and `ilf train`: the training YAML, overrides, threads, progress."""
from __future__ import annotations

import argparse
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """--config, --set (repeatable dotted overrides), --threads, --no-progress."""
    parser.add_argument("--config", required=True, help="training YAML (configs/train/<name>.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config field, dotted keys (e.g. {set_example}); repeatable")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def load_config(args: argparse.Namespace, extra_overrides: dict[str, Any] | None = None):
    """Apply --threads, then load the training config with --set (and any extra overrides)."""
    import torch

    from ilf.train import load_train_config, parse_overrides

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    overrides.update(extra_overrides or {})
    return load_train_config(args.config, overrides)
