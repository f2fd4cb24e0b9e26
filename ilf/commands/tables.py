"""`ilf tables`: summary.csv -> table1.tex..table6.tex and table{k}_vs_paper.tex (pandas Styler)."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """Regenerates every table from stored results only; never runs a model. Also writes table{k}.html (the
table, then the paper's numbers beside this run's) and summary.html (every row with its provenance) for the report.

    ilf tables --summary results/summary.csv --paper configs/paper_numbers.csv --out results
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", required=True, type=Path, help="summary.csv written by `ilf summarize`")
    parser.add_argument("--paper", type=Path, default=None,
                        help="the paper's printed numbers (default: configs/paper_numbers.csv of this repository)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the .tex files")
    parser.add_argument("--world", choices=("toy", "paper"), default=None,
                        help="override the summary's `world` column (decides TOY captions and metric columns)")


def run(args: argparse.Namespace) -> int:
    from ilf.report.html_tables import write_html_tables
    from ilf.report.paper_numbers import load_paper_numbers
    from ilf.report.summarize import read_summary
    from ilf.report.tables import write_tables

    if not args.summary.exists():
        raise FileNotFoundError(f"{args.summary} does not exist (run `ilf summarize --config ...` first)")
    summary, paper = read_summary(args.summary), load_paper_numbers(args.paper)
    paths = write_tables(summary, paper, args.out, args.world)
    pages = write_html_tables(summary, paper, args.out, args.world)  # the report's pages: table{k}.html, summary.html
    print(f"wrote {len(paths)} tables and {len(pages)} HTML pages to {args.out}")
    return 0
