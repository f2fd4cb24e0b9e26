"""`ilf prefetch`: download everything a run needs into the ILF cache, on a machine with internet.

Compute nodes without internet then run with `ILF_CACHE` pointing at the same directory; nothing is
downloaded at run time, and a missing item fails at once naming this command.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

NAME = "prefetch"
HELP = "download backbones, metric weights, prompts and reference data into the ILF cache (login node)"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ilf.registry import BACKBONES

    p.add_argument("--backbone", action="append", default=[], choices=sorted(BACKBONES),
                   help="a backbone of the registry (repeatable)")
    p.add_argument("--metrics", default="", help="comma-separated metric names whose assets to fetch "
                   "(e.g. image_reward,clip_score,clipiqa_good,fid_mjhq)")
    p.add_argument("--metric-assets", action="append", default=[],
                   help="one asset by name, as named by a missing-asset error (repeatable)")
    p.add_argument("--clip-model", default=None, help="CLIP model for clip_score (default: the metrics' default)")
    p.add_argument("--config", type=Path, help="a workflow config: fetch every backbone and metric its rows need")
    p.add_argument("--cache-dir", type=Path, help="the ILF cache (default: $ILF_CACHE or ~/.cache/ilf)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be fetched")


def _from_config(path: Path) -> tuple[set[str], set[str]]:
    import yaml

    cfg = yaml.safe_load(path.read_text()) or {}
    if cfg.get("world") == "toy":
        return set(), set()
    rows = cfg.get("rows", [])
    from ilf.registry import BACKBONES

    backbones = {r["backbone"] for r in rows if r.get("backbone") in BACKBONES}
    metrics = {m for r in rows for m in r.get("metrics", [])}
    return backbones, metrics


def run(args: argparse.Namespace) -> int:
    from ilf.paths import cache_dir
    from ilf.registry import prefetch_backbone

    if args.cache_dir:
        os.environ["ILF_CACHE"] = str(args.cache_dir)
    backbones = set(args.backbone)
    metrics = {m for m in args.metrics.split(",") if m}
    if args.config:
        b, m = _from_config(args.config)
        backbones |= b
        metrics |= m
    root = cache_dir()
    print(f"[prefetch] cache: {root}")
    print(f"[prefetch] backbones: {sorted(backbones) or 'none'}; metric assets for: {sorted(metrics) or 'none'}")
    assets = set(args.metric_assets)
    if args.config:  # the prompt sets its rows generate from (DrawBench, ImageReward's, MJHQ-30K's)
        from ilf.harness.workflow_config import load_workflow_config, prompt_specs
        from ilf.metrics.assets import prompt_set_assets

        rows = load_workflow_config(args.config)["rows"]
        assets |= set(prompt_set_assets(s["set"] for r in rows for s in prompt_specs(r)))
    if metrics:
        from ilf.metrics.assets import DEFAULT_CLIP_MODEL, assets_for_metrics

        assets |= set(assets_for_metrics(sorted(metrics), args.clip_model or DEFAULT_CLIP_MODEL))
    print(f"[prefetch] metric assets: {sorted(assets) or 'none'}")
    if args.dry_run:
        return 0
    for name in sorted(backbones):
        print(f"[prefetch] {name} -> {prefetch_backbone(name)}")
    if assets:
        from ilf.metrics.assets import fetch_metric_assets

        fetch_metric_assets(sorted(assets), root)
    print("[prefetch] done")
    return 0
