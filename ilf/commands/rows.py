"""`ilf rows`: validate a workflow config and list the rows the workflow runs."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Loads a workflow config the way the workflow and every `ilf` command do (defaults, variants and vary
expanded, every row checked; see docs/formats.md, "The workflow config") and prints one line per row:
table, name, backbone, method, steps and analytic block forwards, then the number of image folders and the
training runs the rows need. A bad config is one error line naming the key, exit status 2.

  ilf rows --config configs/paper.yaml
  ilf rows --config configs/toy_study.yaml --names      # the row names only, one per line
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="workflow YAML or resolved workflow_config.json "
                   "(default configs/toy.yaml)")
    p.add_argument("--names", action="store_true", help="print only the row names, one per line")


def run(args: argparse.Namespace) -> int:
    from ilf.harness.workflow_config import generation_rows, load_workflow_config, training_runs_needed

    cfg = load_workflow_config(args.config)
    if args.names:
        print("\n".join(r["name"] for r in cfg["rows"]))
        return 0
    for r in cfg["rows"]:
        share = f" (images of {r['shares_images_with']})" if r["shares_images_with"] else ""
        print(f"{str(r['table']):8s} {r['name']:44s} {r['backbone']:18s} {r['method']:8s} steps={r['steps']:<3d} "
              f"blocks={_count(r['block_forwards_analytic'])}{share}")
    print(f"{len(cfg['rows'])} rows, {len(generation_rows(cfg))} image folders, "
          f"training runs: {', '.join(training_runs_needed(cfg)) or 'none'}")
    return 0


def _count(analytic: int | None) -> str:
    """Analytic block forwards per image, or "dynamic" for a method that decides at run time (measured only)."""
    return "dynamic" if analytic is None else str(analytic)
