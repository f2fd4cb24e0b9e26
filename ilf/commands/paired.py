"""`ilf paired`: paired per-image differences of table rows against a reference row (ilf.report.paired)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ilf.commands import positive_int

DESCRIPTION = """\
Rows of one backbone share prompts and per-image seeds (docs/formats.md, "The generation record"), so each
row is compared with a reference row image by image: row mean, reference mean, the mean paired difference
and its 95% bootstrap interval, per metric. Reads the row summary and each row's metrics record only.

  ilf paired --summary results/toy_study/summary.csv --reference c2i_b10 --toy-fid
  ilf paired --summary results/toy/summary.csv --reference t1_toy-t2i_baseline-20 --out paired.csv
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ilf.metrics.bootstrap import N_BOOT

    p.add_argument("--summary", required=True, type=Path, help="summary.csv written by `ilf summarize`")
    p.add_argument("--reference", required=True, action="append",
                   help="reference row (repeatable: one per backbone); every row of its backbone is compared")
    p.add_argument("--metrics", default=None, help="comma-separated per-image metrics (default: all present)")
    p.add_argument("--toy-fid", action="store_true", help="also bootstrap toy FID over images (needs the images or "
                   "<row_dir>/toy_features.npy)")
    p.add_argument("--n-boot", type=positive_int, default=N_BOOT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table as CSV here (atomically)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ilf.io import write_text_atomic
    from ilf.report.paired import paired_table

    metrics = args.metrics.split(",") if args.metrics else None
    table = pd.concat([paired_table(args.summary, ref, metrics, args.toy_fid, args.n_boot, args.seed)
                       for ref in args.reference], ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    if args.out:
        write_text_atomic(args.out, table.to_csv(index=False))
    return 0
