"""`ilf bench-summary`: the fastest exact setting per backbone and row across `ilf bench` CSVs (ilf.bench.summary)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Reads every CSV `ilf bench` wrote into a folder, keeps the exact settings (no error; output latents within
ilf.bench.summary.MAX_REL_DIFF of eager with PyTorch's default attention), writes <folder>/summary.json with
the fastest one per backbone and row and whether the speed goals are met, and prints one line per row.

  ilf bench-summary results/bench/gpu
  ilf bench-summary --fastest-sdpa results/bench/gpu/pixart-eager.csv   # prints one SDPA backend name
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", type=Path, default=Path("results/bench/gpu"),
                   help="folder of bench CSVs (default results/bench/gpu)")
    p.add_argument("--fastest-sdpa", type=Path, default=None, metavar="CSV",
                   help="only print the SDPA backend of the fastest eager baseline-20 in this CSV ('default' if none)")


def run(args: argparse.Namespace) -> int:
    from ilf.bench.summary import fastest_sdpa, summarize_folder, summary_lines

    if args.fastest_sdpa is not None:
        print(fastest_sdpa(args.fastest_sdpa))
        return 0
    folder = args.folder
    if not folder.is_dir() or not any(folder.glob("*.csv")):
        raise FileNotFoundError(f"{folder} is not a folder of `ilf bench` CSVs")
    summary = summarize_folder(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join([*summary_lines(summary), f"wrote {folder / 'summary.json'}"]))
    return 0
