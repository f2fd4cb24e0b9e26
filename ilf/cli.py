"""The `ilf` command: one sub-command per module in `ilf.commands`.

Each command module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
Modules are imported lazily so that `ilf --help` stays fast and a command's heavy
dependencies are only loaded when that command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order = order in `ilf --help`.
COMMANDS: tuple[str, ...] = (
    "prefetch", "demo", "precompute", "train", "generate", "metrics",
    "summarize", "tables", "figures", "features", "bench", "toy",
)


def _load(name: str):
    try:
        return importlib.import_module(f"ilf.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"ilf.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilf", description="Inner Loop Feedback for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"ilf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
