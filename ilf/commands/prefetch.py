"""`ilf prefetch`: download everything a run needs into the ILF cache, on a machine with internet.

Compute nodes without internet then run with `ILF_CACHE` pointing at the same directory; nothing is
downloaded at run time, and a missing item fails at once naming this command.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

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


def _from_config(path: Path) -> tuple[set[str], set[str], set[str], dict]:
    """(backbones, metrics, prompt-set assets, metric options) of a workflow config's resolved rows and features."""
    from ilf.harness.workflow_config import load_workflow_config, prompt_specs
    from ilf.metrics.assets import assets_for_prompt_sets
    from ilf.registry import BACKBONES

    cfg = load_workflow_config(path)  # the rows the workflow runs (defaults, variants and vary expanded)
    used = cfg["rows"] + cfg["features"]
    backbones = {r["backbone"] for r in used if r["backbone"] in BACKBONES}
    metrics = {m for r in cfg["rows"] for m in r["metrics"]}
    sets = {s["set"] for r in cfg["rows"] for s in prompt_specs(r)}
    sets |= {f["prompts"] for f in cfg["features"] if f.get("prompts")}
    return backbones, metrics, set(assets_for_prompt_sets(sorted(sets))), cfg["metric_options"]


def run(args: argparse.Namespace) -> int:
    from ilf.paths import cache_dir
    from ilf.registry import BACKBONES, gated_note, hf_download_command, prefetch_backbone

    if args.cache_dir:
        os.environ["ILF_CACHE"] = str(args.cache_dir)
    backbones = set(args.backbone)
    metrics = {m for m in args.metrics.split(",") if m}
    assets = set(args.metric_assets)
    options: dict = {}
    if args.config:
        b, m, a, options = _from_config(args.config)
        backbones, metrics, assets = backbones | b, metrics | m, assets | a
    root = cache_dir()
    print(f"[prefetch] cache: {root}")
    print(f"[prefetch] backbones: {sorted(backbones) or 'none'}; metric assets for: {sorted(metrics) or 'none'}")
    for name in sorted(backbones):  # the same download by hand; a gated repo needs its license accepted first
        note = gated_note(BACKBONES[name])
        print(f"[prefetch] {name}: {hf_download_command(BACKBONES[name].repo_id)}" + (f"  ({note})" if note else ""))
    if metrics:
        from ilf.metrics.assets import DEFAULT_CLIP_MODEL, DEFAULT_FID_REFS, assets_for_metrics

        # the workflow's metric jobs get `metric_options` as --clip-model / --fid-ref (the latter for every FID metric)
        clip_model = args.clip_model or options.get("clip_model", DEFAULT_CLIP_MODEL)
        fid_refs = dict.fromkeys(DEFAULT_FID_REFS, options["fid_ref"]) if options.get("fid_ref") else None
        assets |= set(assets_for_metrics(sorted(metrics), clip_model, fid_refs))
    print(f"[prefetch] metric assets: {sorted(assets) or 'none'}")
    if any(name.startswith("fid-stats:") for name in assets):
        from ilf.metrics.assets import METRIC_ASSETS, user_made

        for name in sorted(filter(user_made, assets)):
            print(f"[prefetch] {name}: {METRIC_ASSETS.get(name, {}).get('how', 'made by you, not downloaded')}")
    if args.dry_run:
        return 0
    for name in sorted(backbones):
        print(f"[prefetch] {name} -> {prefetch_backbone(name)}")
    if assets:
        from ilf.metrics.assets import fetch_metric_assets

        fetch_metric_assets(sorted(assets), root)
    print("[prefetch] done")
    return 0
