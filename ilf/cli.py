"""The `ilf` command: one sub-command per module in `ilf.commands`.

Each command module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`. Only the
module of the command being run is imported, so `ilf tables` never pays for torch/diffusers.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help (the module's HELP is used once it is loaded); order = order in `ilf --help`.
COMMANDS: dict[str, str] = {
    "prefetch": "download backbones, metric weights, prompts and reference data into the ILF cache (login node)",
    "demo": "attach ILF and the cache to a tiny stock pipeline and print measured vs analytic block forwards",
    "precompute": "encode training data once (VAE latents + caption embeddings) into sharded safetensors",
    "train": "train the feedback module (fast / standard / no distillation); torchrun for several GPUs",
    "generate": "generate one table row's images (sharded, resumable) with per-image records",
    "metrics": "score one generated row with the paper's (or the toy world's) metrics",
    "summarize": "collect every row's records into rows/<row>.csv and summary.csv",
    "tables": "regenerate the paper's LaTeX tables (and paper-vs-run tables) from summary.csv",
    "figures": "draw the paper's figures and the Pareto figure from stored results",
    "browse": "write a static image browser of a run: every row's images side by side, with their metric values",
    "features": "record per-block feature changes (Figs. 3 and 4) for the baseline and the cache",
    "bench": "wall-clock speed of every method against block forwards on the real architectures",
    "toy": "the toy world: pretrain toy backbones, train toy classifiers, info",
}


def _load(name: str):
    try:
        return importlib.import_module(f"ilf.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"ilf.commands.{name}":
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
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
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
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        message = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"ilf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
