"""`ilf summarize`: every row's generation.jsonl + metrics_summary.json -> rows/<row>.csv and summary.csv."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """Reads the workflow config's rows (expanded, as the workflow runs them), `out_dir`, `world` and
`seed`, then for every row <out_dir>/rows/<row>/generation.jsonl and metrics_summary.json. Checks measured ==
analytic block forwards per image, takes the median seconds per image, computes speedups against the row's reference
(`reference_row`, else the same group's baseline with the most steps), and writes the CSVs atomically.

    ilf summarize --config configs/toy.yaml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="workflow YAML or resolved workflow_config.json")
    parser.add_argument("--out-dir", type=Path, default=None, help="override the config's out_dir")
    parser.add_argument("--allow-missing", action="store_true",
                        help="rows without generation records get empty columns instead of an error")


def run(args: argparse.Namespace) -> int:
    from ilf.harness.workflow_config import load_workflow_config

    config = load_workflow_config(args.config)  # rows expanded and filled in, as the workflow sees them
    from ilf.report.summarize import summarize_rows

    out_dir = args.out_dir or Path(config["out_dir"])
    df = summarize_rows(config["rows"], out_dir, config["world"], seed=config.get("seed"),
                        allow_missing=args.allow_missing)
    print(f"wrote {out_dir / 'summary.csv'} ({len(df)} rows) and {out_dir / 'rows'}/<row>.csv")
    return 0
