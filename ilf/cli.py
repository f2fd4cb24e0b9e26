"""The `ilf` command: one sub-command per module in `ilf.commands`.

`COMMANDS` below is the one place of each command's one-line help. A command module (`ilf/commands/<name>.py`,
dashes as underscores) defines `add_arguments(parser)`, `run(args) -> int` and optionally `DESCRIPTION` (the
longer text of `ilf <name> --help`). Only the module of the command being run is imported, so `ilf --help` and
`ilf tables` never pay for torch/diffusers. `python -m ilf.cli` is the same command (what torchrun starts).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help, the only one; order = order in `ilf --help`.
COMMANDS: dict[str, str] = {
    "prefetch": "download backbones, metric weights, prompts and reference data into the ILF cache (login node)",
    "demo": "attach ILF and the cache to a tiny stock pipeline and print measured vs analytic block forwards",
    "rows": "validate a workflow config and list its expanded rows with their analytic block forwards",
    "precompute": "encode a training config's images and captions once into sharded latents (resumable)",
    "train": "train the feedback module (distill: fast | standard | none); resumable, torchrun for several GPUs",
    "generate": "generate the images of workflow rows (or one shard of a row, resumable) and their per-image records",
    "metrics": "score generated rows with the paper's or the toy world's metrics (metrics.jsonl, metrics_summary.json)",
    "summarize": "collect every row's records into the row summary: <out_dir>/rows/<row>.csv and summary.csv",
    "tables": "write the paper's Tables 1-6 (LaTeX) and paper-vs-run tables from summary.csv",
    "browse": "write a static, offline image browser of a run: every row's images side by side, with their metric values",
    "figures": "draw Figs. 3/4, 7, 8, qualitative grids and the block-forward Pareto figure from stored results",
    "features": "record the feature-change maps of Figs. 3/4 (baseline vs cache) for `ilf figures`",
    "paired": "paired per-image differences of rows against a reference row, with bootstrap CIs, from stored results",
    "bench": "time every method's sampling runs on the real architectures (random weights) against block forwards",
    "bench-summary": "the fastest exact setting per backbone and row across `ilf bench` CSVs, against the speed goals",
    "toy": "the toy world: pretrain the toy backbones, train the toy classifiers, sweeps, the study's image subset",
}


def module_name(command: str) -> str:
    """The module of `ilf.commands` that implements `command` (`bench-summary` -> `bench_summary`)."""
    return command.replace("-", "_")


def _load(name: str):
    try:
        return importlib.import_module(f"ilf.commands.{module_name(name)}")
    except ModuleNotFoundError as err:
        if err.name == f"ilf.commands.{module_name(name)}":
            return None
        raise


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that sub-command's module is imported and its options added."""
    parser = argparse.ArgumentParser(prog="ilf", description="Inner Loop Feedback for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name != command:  # not the command being run: listed with its one-line help, not imported
            sub.add_parser(name, help=help_text)
            continue
        mod = _load(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=help_text, description=getattr(mod, "DESCRIPTION", None) or help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `ilf rows | head`: the reader left; say nothing more
        sys.stderr.close()
        return 0
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        message = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"ilf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
