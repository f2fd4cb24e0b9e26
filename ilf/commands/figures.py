"""`ilf figures`: summary.csv (+ row images, + feature maps) -> PNG and PDF figures."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """Reads stored results only; never runs a model.

    ilf figures --summary results/summary.csv --out results/figures \\
        [--rows-dir results/rows] [--features results/features/toy-t2i ...] [--metric toy_fid] \\
        [--runs results/runs/toy_t2i ...]

Defaults: --rows-dir = <summary folder>/rows, --features = every <summary folder>/features/*/ folder,
--runs = every <summary folder>/runs/*/ training run folder holding train_diagnostics.jsonl.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, type=Path, help="summary.csv written by `ilf summarize`")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG and PDF files")
    parser.add_argument("--rows-dir", type=Path, default=None, help="folder of the row folders (images)")
    parser.add_argument("--features", type=Path, nargs="+", action="extend", default=None,
                        help="folders (or features.safetensors/.npz files) written by `ilf features`; repeatable")
    parser.add_argument("--runs", type=Path, nargs="+", action="extend", default=None,
                        help="training run folders (`ilf train --out`) whose train_diagnostics.jsonl to plot; repeatable")
    parser.add_argument("--metric", default=None, help="quality metric to plot (default: the first available of "
                        "image_reward, fid_imagenet, fid_mjhq, clip_score, toy_fid, toy_adherence, toy_class_accuracy)")
    parser.add_argument("--num-images", type=int, default=4, help="images per row of the qualitative grids")
    parser.add_argument("--world", choices=("toy", "paper"), default=None, help="override the summary's world")


def run(args: argparse.Namespace) -> int:
    from ilf.report.figures import make_figures
    from ilf.report.summarize import read_summary

    if not args.summary.exists():
        raise FileNotFoundError(f"{args.summary} does not exist (run `ilf summarize --config ...` first)")
    root = args.summary.parent
    rows_dir = args.rows_dir or root / "rows"
    if args.features is not None:
        features = args.features
    else:
        features = sorted({p.parent for p in root.glob("features/*/features.*") if p.suffix in (".safetensors", ".npz")})
    runs = args.runs if args.runs is not None else sorted(p.parent for p in root.glob("runs/*/train_diagnostics.jsonl"))
    for folder in runs:
        if not (folder / "train_diagnostics.jsonl").is_file():
            raise FileNotFoundError(f"{folder} holds no train_diagnostics.jsonl (a folder `ilf train --out` wrote)")
    paths = make_figures(read_summary(args.summary), args.out, rows_dir, features, args.metric, args.num_images,
                         args.world, runs)
    print(f"wrote {len(paths)} figure files to {args.out}")
    return 0
