"""`ilf toy`: pre-train the toy backbones, train the toy classifiers, show what ships."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """The toy world (docs/toy.md): shapes with captions (t2i, tiny PixArt; toy-flux: tiny FLUX trained
by flow matching) and digits (c2i, tiny DiT).

  ilf toy pretrain --task t2i --out ilf/toy/assets/toy-t2i     # re-create a shipped backbone
  ilf toy pretrain --task c2i --out ilf/toy/assets/toy-c2i
  ilf toy pretrain --task t2i --backbone toy-flux --out ilf/toy/assets/toy-flux   # flow matching, tiny FLUX
  ilf toy train-classifiers --task t2i --out ilf/toy/assets/classifiers
  ilf toy info
  ilf toy step-sweep --task c2i --n 300 --out results/toy_step_sweep_c2i.csv   # where is there a step gap?
  ilf toy study-subset --out results/toy_study/kid_check_images.npz --per-class 20   # docs/toy_metrics.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ilf.toy.pretrain import PretrainConfig
    from ilf.toy.study_subset import ROWS, STUDY_DIR

    sub = parser.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="train a toy backbone (epsilon-prediction DDPM, 10%% condition dropout)")
    p.add_argument("--task", required=True, choices=("t2i", "c2i"))
    p.add_argument("--out", required=True, help="output folder, e.g. ilf/toy/assets/toy-t2i")
    p.add_argument("--backbone", default=None, choices=("toy-t2i", "toy-c2i", "toy-flux"),
                   help="default: the task's DDPM backbone; toy-flux: tiny FLUX trained by flow matching (t2i)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--num-images", type=int, default=d.num_images, help="t2i: number of rendered training scenes")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--min-snr-gamma", type=float, default=d.min_snr_gamma, help="Min-SNR loss weighting (default off)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the forward pass (CUDA only)")
    p.add_argument("--init-from", default=None, help="start from the backbone written in this folder (second stage)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue from the state folder")
    p.add_argument("--state-dir", default=None, help="resume state (default results/toy/pretrain-<task>, not shipped)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this many minutes")
    c = sub.add_parser("train-classifiers", help="train the toy attribute/digit classifiers behind the toy metrics")
    c.add_argument("--task", required=True, choices=("t2i", "c2i"))
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="list the toy backbones and what ships with them")
    g = sub.add_parser("solver-gap", help="RMSE of 10/12/20-step samples to a 100-step solution (same noise)")
    g.add_argument("--task", required=True, choices=("t2i", "c2i"))
    g.add_argument("--n", type=int, default=16)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", default="10,12,20")
    g.add_argument("--reference-steps", type=int, default=100)
    w = sub.add_parser("step-sweep", help="toy quality of the plain sampler against the number of steps (paired, CIs)")
    w.add_argument("--task", required=True, choices=("t2i", "c2i"))
    w.add_argument("--backbone", default=None, choices=("toy-t2i", "toy-c2i", "toy-flux"),
                   help="default: the task's backbone; toy-flux: the flow-matching toy (t2i)")
    w.add_argument("--guidance-scale", type=float, default=4.0)
    w.add_argument("--n", type=int, default=300, help="images per step count")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--steps", default="3,4,5,6,8,10,12,20")
    w.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    w.add_argument("--out", default=None, help="CSV path (written atomically)")
    w.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("study-subset", help="re-make a fixed image subset of the toy study's baseline rows from their "
                       "stored seeds (ilf.toy.study_subset)")
    s.add_argument("--out", type=Path, required=True, help=".npz path (written atomically)")
    s.add_argument("--rows", default=",".join(ROWS), help="comma-separated baseline rows of the study")
    s.add_argument("--per-class", type=int, default=20, help="images per digit class and row")
    s.add_argument("--study-dir", type=Path, default=STUDY_DIR, help="the study's results folder")


def _info() -> int:
    from ilf.toy.backbones import BACKBONE_NAMES
    from ilf.toy.pipelines import asset_path, required_files

    from ilf.toy.flux import FLUX_BACKBONE, flux_asset_path

    for task, name in [*BACKBONE_NAMES.items(), ("t2i", FLUX_BACKBONE)]:
        folder = flux_asset_path() if name == FLUX_BACKBONE else asset_path(task)
        files = required_files(task)[:2] if name == FLUX_BACKBONE else required_files(task)  # toy-flux: transformer
        missing = [f for f in files if not (folder / f).is_file()]
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
        print(f"{name} ({task}): {folder}  {size / 1e6:.1f} MB  " + (f"MISSING {missing}" if missing else "complete"))
        meta = folder / "pretrain.json"
        if meta.exists():
            info = json.loads(meta.read_text())
            print(f"  steps={info['steps_done']} final_loss={info['final_loss']:.4f} params={info['num_parameters']:,} "
                  f"trained on {info['device']} in {info['seconds'] / 60:.1f} min")
    return 0


def _step_sweep(args: argparse.Namespace) -> int:
    import torch

    from ilf.toy.sweep import step_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    records = step_sweep(args.task, steps, n=args.n, seed=args.seed, progress=not args.no_progress,
                         backbone=args.backbone, guidance_scale=args.guidance_scale)
    for r in records:
        print(f"{r['backbone']} {r['steps']:>3} steps: {r['metric']} {r['mean']:.4f}  vs {r['reference_steps']} steps "
              f"{r['diff_vs_reference']:+.4f} [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}] (n={r['n']}, paired)")
    if args.out:
        import pandas as pd

        from ilf.io import atomic_path

        with atomic_path(Path(args.out)) as tmp:
            pd.DataFrame(records).to_csv(tmp, index=False)
        print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.toy_command == "info":
        return _info()
    if args.toy_command == "solver-gap":
        from ilf.toy.pipelines import solver_gap

        gap = solver_gap(args.task, tuple(int(s) for s in args.steps.split(",")), args.reference_steps, args.n, args.seed)
        for k, (mean, se, _) in gap.items():
            print(f"toy-{args.task} {k:>3} steps: RMSE to {args.reference_steps}-step solution {mean:.4f} +- {se:.4f} (n={args.n})")
        return 0
    if args.toy_command == "step-sweep":
        return _step_sweep(args)
    if args.toy_command == "study-subset":
        import torch

        from ilf.toy.study_subset import make_study_subset

        torch.set_num_threads(1)
        print(f"wrote {make_study_subset(args.out, args.rows.split(','), args.per_class, args.study_dir)}")
        return 0
    if args.toy_command == "train-classifiers":
        from ilf.toy.classifiers import train_classifiers  # owned by the toy-metrics module

        train_classifiers(Path(args.out), args.task, args.seed)
        return 0
    import torch

    from ilf.toy.pretrain import PretrainConfig, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(task=args.task, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         num_images=args.num_images, seed=args.seed, warmup=args.warmup,
                         min_snr_gamma=args.min_snr_gamma, bf16=args.bf16, ema_decay=args.ema_decay,
                         backbone=None if args.backbone in (None, f"toy-{args.task}") else args.backbone)
    summary = pretrain(cfg, args.out, device=args.device, resume=args.resume, max_minutes=args.max_minutes,
                       state_dir=args.state_dir, init_from=args.init_from)
    state = "done" if summary["finished"] else "stopped early, weights written (continue with --resume)"
    print(f"{state}: step {summary['steps_done']}/{cfg.steps}, loss {summary['final_loss']:.4f}, "
          f"{summary['seconds'] / 60:.1f} min -> {args.out}")
    return 0
