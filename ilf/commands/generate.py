"""`ilf generate`: the images of workflow rows (or one shard of one row) and their generation record, resumable."""
from __future__ import annotations

import argparse

from ilf.commands import positive_int

DESCRIPTION = """\
Generate the images of one row of a workflow config into <out_dir>/rows/<row>/images/{index:06d}.png
with one JSON record per image (the generation record, docs/formats.md).

  ilf generate --config configs/toy.yaml --row t1_toy-t2i_ilf                      # whole row
  ilf generate --config configs/toy.yaml --row t1_toy-t2i_ilf --shard 0 --num-shards 4
  ilf generate --config configs/toy.yaml --row t1_toy-t2i_ilf --merge --num-shards 4

Shard k writes <row_dir>/shards/shard-k-of-n.jsonl; --merge joins them into <row_dir>/generation.jsonl
(without --shard and --merge, the whole row is generated and merged in one go). A killed run re-run with
the same arguments skips finished images. Seeds depend on (seed, prompt, sample), never on the shard count.

Several --row arguments generate those rows one after the other in one process (what the workflow's
`rows_per_job` does on the toy world: the interpreter and import start is paid once); each row gets a
fresh pipeline, so its images are the same as when it is generated alone:

  ilf generate --config configs/toy.yaml --row t1_toy-t2i_baseline-20 --row t1_toy-t2i_cache
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="workflow YAML or resolved workflow_config.json (default configs/toy.yaml)")
    p.add_argument("--row", required=True, action="append",
                   help="row name, repeatable (rows that share images generate their owner's folder)")
    p.add_argument("--shard", type=int, default=None, help="0-based shard index")
    p.add_argument("--num-shards", type=positive_int, default=1, help="number of shards of the row (default 1)")
    p.add_argument("--merge", action="store_true", help="join the shard records into generation.jsonl")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's device)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="weights dtype on GPU (default: the backbone's dtype in the config)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per pipeline call (default: the row's)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up pipeline calls (default 1)")


def run(args: argparse.Namespace) -> int:
    from ilf.errors import ILFConfigError
    from ilf.harness.workflow_config import get_row, load_workflow_config

    cfg = load_workflow_config(args.config)  # checked before torch and the models load
    if len(args.row) > 1 and (args.shard is not None or args.merge or args.num_shards != 1):
        raise ILFConfigError("--row", " ".join(args.row), "one row with --shard, --merge or --num-shards > 1")
    owners: dict[str, dict] = {}
    for name in args.row:
        row = get_row(cfg, name)  # every name is checked before any image is made
        if row["shares_images_with"]:
            row = get_row(cfg, row["shares_images_with"])
            print(f"row {name!r} shares its images with {row['name']!r}: generating that folder")
        owners.setdefault(row["name"], row)
    from ilf.harness.generate import generate_row, merge_shards

    device = args.device or cfg.get("device", "auto")
    for row in owners.values():
        dtype = args.dtype or cfg["backbones"][row["backbone"]].get("dtype", "float32")
        shards = [args.shard] if args.shard is not None else ([] if args.merge else range(args.num_shards))
        for k in shards:
            path = generate_row(row, k, args.num_shards, device=device, dtype=dtype, batch_size=args.batch_size,
                                warmup=args.warmup)
            print(f"shard {k + 1}/{args.num_shards} of {row['name']}: {path}")
        if args.merge or args.shard is None:
            print(f"records: {merge_shards(row, args.num_shards)}")
    return 0
