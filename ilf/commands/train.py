"""`ilf train`: train the feedback module of a backbone (paper Sec. 3.2; docs/training.md)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._training_args import add_config_arguments, load_config

DESCRIPTION = """Train ILF's feedback block and scales on precomputed latents (run `ilf precompute` first).

Distillation modes (the training YAML's `distill:` field, or --set distill=...):
  fast      default: one teacher forward of the frozen backbone at t//2 (Fast Approximate Distillation)
  standard  K DPM-Solver++ teacher steps from t to t//2 (K = teacher_steps, 8 by default), as the
            DDIM-equivalent noise; the paper's Fig. 11 comparison
  none      reconstruction loss only (no teacher)

Resuming: checkpoints go to <out>/checkpoints/iter_NNNNNN/ every checkpoint_interval iterations (the
keep_iterations list is never deleted). After a kill, run the same command with --resume: it continues
from the latest complete checkpoint and reaches bit-identical weights on CPU. --resume-from DIR picks a
checkpoint explicitly. The final weights go to <out>/final/ (ilf.load_feedback(pipe, "<out>/final")),
the per-step log to <out>/train_log.jsonl.

  ilf train --config configs/train/toy_t2i.yaml --out results/runs/toy_t2i
  ilf train --config configs/train/toy_t2i.yaml --out results/runs/toy_t2i --resume
  ilf train --config configs/train/pixart_alpha_512.yaml --out runs/a512 --set distill=standard --set iterations=2000
  torchrun --nproc_per_node 8 -m ilf.cli train --config configs/train/pixart_alpha_512.yaml --out runs/a512
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "optim.lr=1e-5, iterations=100")
    parser.add_argument("--out", required=True, help="run folder: checkpoints/, final/, train_log.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--resume-from", default=None, metavar="DIR", help="continue from this checkpoint folder")
    parser.add_argument("--latents", default=None, metavar="DIR", help="precomputed latents (overrides data.latents_dir)")
    parser.add_argument("--distill", default=None, choices=("fast", "standard", "none"), help="override distill")


def run(args: argparse.Namespace) -> int:
    from ilf.harness.joblock import job_lock
    from ilf.train import train
    from ilf.errors import MissingLatentsError
    from ilf.train.backbone import check_trainable

    extra = {}
    if args.latents:
        extra["data.latents_dir"] = args.latents
    if args.distill:
        extra["distill"] = args.distill
    config = load_config(args, extra)
    check_trainable(config.backbone)  # before anything is written
    out = Path(args.out)
    made_out = not out.exists()
    try:
        # one training per run folder: rank 0 holds <out>/.ilf-train.lock (SLURM job id, host, pid) while it runs
        with job_lock(out / ".ilf-train.lock", enabled=os.environ.get("RANK", "0") == "0"):
            final = train(config, args.out, resume=args.resume, resume_from=args.resume_from,
                          progress=not args.no_progress)
    except MissingLatentsError as err:
        _drop_if_empty(out, made_out)
        raise err.with_config(args.config) from None
    except (ValueError, FileNotFoundError):
        _drop_if_empty(out, made_out)  # a refused run leaves nothing behind
        raise
    print(f"final feedback weights: {final}  (ilf.load_feedback(pipe, {str(final)!r}))")
    return 0


def _drop_if_empty(out: Path, made_out: bool) -> None:
    """Remove the run folder this command created when the run stopped before writing anything into it."""
    if made_out and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
