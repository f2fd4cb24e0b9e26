"""`ilf features`: record feature change across steps and blocks, baseline vs cache (paper Figs. 3 and 4)."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """Runs the backbone twice on the same prompts and noise (plain, then with the cache attached),
records the tensor every block position passes on at every step (forward hooks; see ilf/harness/features.py),
and stores the block x step distance maps. `ilf figures` draws them.

    ilf features --config results/toy/workflow_config.json --name toy-t2i --out results/toy/features/toy-t2i
    ilf features --backbone toy-t2i --steps 20 --out results/features/toy-t2i
    ilf features --backbone pixart-alpha-512 --prompts-set imagereward-benchmark --device cuda --out ...

With --config, the entry `features[name == --name]` of the workflow config gives backbone, steps, cache,
prompts and num_prompts (explicit flags still override). The cache defaults to Fig. 3's setting: the
inner half of the blocks, recomputed every other step.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="workflow config (YAML/JSON) with a `features` list")
    parser.add_argument("--name", default=None, help="which `features` entry of --config (also the figure name)")
    parser.add_argument("--backbone", default=None, help="toy-t2i, toy-c2i, or a registry name (pixart-alpha-512, ...)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the feature maps")
    parser.add_argument("--steps", type=int, default=None, help="inference steps (DPM-Solver++; default 20)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed, the same for baseline and cache (default 0)")
    parser.add_argument("--prompts-set", default=None, help="a named prompt set of ilf.harness.prompts (default: toy-captions / "
                        "toy-digits for the toy backbones, imagereward-benchmark / imagenet-classes otherwise)")
    parser.add_argument("--num-prompts", type=int, default=None, help="how many items of the set (default 4)")
    parser.add_argument("--cache-location", default=None, help="first | last | outer | inner (default) | alternating")
    parser.add_argument("--cache-num-cached", "--cache-num-blocks", type=int, default=None,
                        help="c, the number of cached blocks (default: half of the blocks; --cache-num-blocks: its former name)")
    parser.add_argument("--cache-interval", type=int, default=None, help="k: recompute every k-th step (default 2)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--device", default=None, help="cpu, cuda, or auto (default)")


def _settings(args: argparse.Namespace) -> dict:
    """Merge the config's features entry (if any) with explicit flags (flags win)."""
    from ilf.config import upgrade_cache_dict

    entry: dict = {}
    cfg: dict = {}
    if args.config is not None:
        from ilf.errors import ILFConfigError
        from ilf.harness.workflow_config import load_workflow_config

        cfg = load_workflow_config(args.config)
        entries = {f["name"]: f for f in cfg["features"]}
        if args.name not in entries:
            raise ILFConfigError("--name", args.name, sorted(entries) or "a features entry (none in config)")
        entry = dict(entries[args.name])
    cache = upgrade_cache_dict(entry.get("cache") or {})
    for key, flag in (("location", "cache_location"), ("num_cached", "cache_num_cached"), ("interval", "cache_interval")):
        if getattr(args, flag) is not None:
            cache[key] = getattr(args, flag)
    backbone = args.backbone or entry.get("backbone")
    if not backbone:
        from ilf.errors import ILFConfigError
        raise ILFConfigError("backbone", None, "--backbone, or --config with --name")
    spec = (cfg.get("backbones") or {}).get(backbone, {})
    return dict(
        name=args.name or backbone, backbone=backbone, steps=args.steps or entry.get("steps") or 20,
        seed=args.seed if args.seed is not None else cfg.get("seed", 0), cache=cache,
        prompts=args.prompts_set or entry.get("prompts"), num_prompts=args.num_prompts or entry.get("num_prompts") or 4,
        guidance_scale=args.guidance_scale if args.guidance_scale is not None else spec.get("guidance_scale"),
        dtype=spec.get("dtype"), device=args.device or cfg.get("device") or "auto",
        world=cfg.get("world") or ("toy" if backbone.startswith("toy-") else "paper"))


def _pipeline(s: dict):
    """(pipe, call kwargs, task)."""
    import torch

    if s["backbone"] in ("toy-t2i", "toy-c2i"):
        from ilf.toy.pipelines import GUIDANCE_SCALE, load_toy_pipeline, toy_call_kwargs

        task = s["backbone"].split("-")[1]
        pipe, kwargs = load_toy_pipeline(task, device=s["device"]), toy_call_kwargs(task)
        kwargs["guidance_scale"] = GUIDANCE_SCALE
    else:
        from ilf.registry import get_backbone, load_pipeline

        task = get_backbone(s["backbone"]).task
        dtype = getattr(torch, s["dtype"]) if s["dtype"] else None
        pipe, kwargs = load_pipeline(s["backbone"], torch_dtype=dtype, device=s["device"]), {}
    pipe.set_progress_bar_config(disable=True)
    if s["guidance_scale"] is not None:
        kwargs["guidance_scale"] = s["guidance_scale"]
    return pipe, kwargs, task


def run(args: argparse.Namespace) -> int:
    from ilf.errors import ILFConfigError

    s = _settings(args)  # the config is checked before torch and the models load
    if s["steps"] < 2:
        raise ILFConfigError("steps", s["steps"], "an integer >= 2 (the figures compare steps)")
    import torch

    from ilf.config import CacheConfig
    from ilf.harness.features import feature_change, save_feature_change
    from ilf.harness.prompts import load_prompt_set
    from ilf.harness.provenance import provenance

    if s["device"] == "auto":
        s["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    pipe, kwargs, task = _pipeline(s)
    default_set = {("t2i", True): "toy-captions", ("c2i", True): "toy-digits", ("t2i", False): "imagereward-benchmark",
                   ("c2i", False): "imagenet-classes"}[(task, s["backbone"].startswith("toy-"))]
    items = load_prompt_set(s["prompts"] or default_set, s["num_prompts"])
    if task == "c2i":
        kwargs["class_labels"] = [int(it.class_label) for it in items]
    else:
        kwargs.update(prompt=[it.prompt for it in items], output_type="latent")
    kwargs["num_inference_steps"] = s["steps"]
    from ilf.adapters import model_blocks

    n = len(model_blocks(pipe.transformer))
    cache = CacheConfig(location=s["cache"].get("location", "inner"), num_cached=s["cache"].get("num_cached", n // 2),
                        interval=s["cache"].get("interval", 2)).validate(n)
    maps = feature_change(pipe, kwargs, cache, seed=s["seed"])
    meta = dict(name=s["name"], backbone=s["backbone"], world=s["world"], steps=s["steps"], seed=s["seed"],
                num_blocks=n, cache=cache.to_dict(), guidance_scale=kwargs.get("guidance_scale"),
                prompt_set=s["prompts"] or default_set, inputs=[it.prompt_id for it in items])
    meta["provenance"] = provenance(meta, s["device"])
    st, js = save_feature_change(maps, args.out, meta)
    print(f"wrote {st} (+ features.npz) and {js}")
    return 0
