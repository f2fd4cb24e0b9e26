"""`ilf features`: record feature change across steps and blocks, baseline vs cache (paper Figs. 3 and 4)."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "features"
HELP = "record Figs. 3/4 feature-change maps (baseline vs cache) into features.npz + features.json"
DESCRIPTION = """Runs the backbone twice on the same prompts and noise (plain, then with the cache attached),
records the tensor every block position passes on at every step (forward hooks; see ilf/features.py),
and stores the block x step distance maps. `ilf figures` draws them.

    ilf features --backbone toy-t2i --steps 20 --out results/features/toy-t2i
    ilf features --backbone pixart-alpha-512 --steps 20 --device cuda --out results/features/pixart-alpha-512

The cache defaults to Fig. 3's setting: the inner half of the blocks, recomputed every other step.
"""
DEFAULT_PROMPTS = (
    "A photo of a red fox standing in fresh snow, golden hour light",
    "An astronaut riding a horse on the moon, highly detailed digital art",
    "A cozy wooden cabin by a lake surrounded by autumn trees",
    "A bowl of ramen with a soft-boiled egg, studio food photography",
)
DEFAULT_CLASSES = (207, 360, 387, 974)  # DiT's sample.py classes (golden retriever, otter, red panda, geyser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help="toy-t2i, toy-c2i, or a registry name (pixart-alpha-512, ...)")
    parser.add_argument("--out", required=True, type=Path, help="folder for features.npz and features.json")
    parser.add_argument("--steps", type=int, default=20, help="inference steps (DPM-Solver++)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the same for baseline and cache)")
    parser.add_argument("--prompts", nargs="+", default=None, help="text prompts (t2i)")
    parser.add_argument("--num-prompts", type=int, default=4, help="toy-t2i: how many toy captions to sample")
    parser.add_argument("--class-labels", type=int, nargs="+", default=None, help="class labels (c2i)")
    parser.add_argument("--cache-location", default="inner", help="first | last | outer | inner | alternating")
    parser.add_argument("--cache-num-blocks", type=int, default=None, help="c (default: half of the blocks)")
    parser.add_argument("--cache-interval", type=int, default=2, help="k: recompute every k-th step")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default=None, help="name used in figure file names (default: the backbone)")


def _pipeline_and_kwargs(args: argparse.Namespace):
    """(pipe, call kwargs, inputs for the record) for the backbone named in args."""
    if args.backbone in ("toy-t2i", "toy-c2i"):
        from ilf.toy.pipelines import GUIDANCE_SCALE, load_toy_pipeline, toy_call_kwargs

        task = args.backbone.split("-")[1]
        pipe, kwargs = load_toy_pipeline(task, device=args.device), toy_call_kwargs(task)
        kwargs["guidance_scale"] = GUIDANCE_SCALE
    else:
        from ilf.registry import get_backbone, load_pipeline

        spec = get_backbone(args.backbone)
        task = spec.task
        pipe, kwargs = load_pipeline(args.backbone, device=args.device), {}
    pipe.set_progress_bar_config(disable=True)
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    if task == "c2i":
        labels = args.class_labels or (list(range(4)) if args.backbone == "toy-c2i" else list(DEFAULT_CLASSES))
        kwargs.update(class_labels=labels)
        inputs = {"class_labels": labels}
    else:
        if args.prompts:
            prompts = list(args.prompts)
        elif args.backbone == "toy-t2i":
            from ilf.toy.data import toy_prompts
            prompts = toy_prompts(args.num_prompts, args.seed)
        else:
            prompts = list(DEFAULT_PROMPTS)
        kwargs.update(prompt=prompts, output_type="latent")
        inputs = {"prompts": prompts}
    kwargs["num_inference_steps"] = args.steps
    return pipe, kwargs, inputs


def run(args: argparse.Namespace) -> int:
    from ilf.config import CacheConfig
    from ilf.errors import ILFConfigError
    from ilf.features import feature_change, save_feature_change
    from ilf.provenance import provenance

    if args.steps < 2:
        raise ILFConfigError("steps", args.steps, "an integer >= 2 (the figures compare steps)")
    pipe, kwargs, inputs = _pipeline_and_kwargs(args)
    n = len(pipe.transformer.transformer_blocks)
    cache = CacheConfig(location=args.cache_location, num_blocks=args.cache_num_blocks or n // 2,
                        interval=args.cache_interval).validate(n)
    maps = feature_change(pipe, kwargs, cache, seed=args.seed)
    meta = dict(name=args.name or args.backbone, backbone=args.backbone,
                world="toy" if args.backbone.startswith("toy-") else "paper", steps=args.steps, seed=args.seed,
                num_blocks=n, cache=cache.to_dict(), guidance_scale=kwargs.get("guidance_scale"), **inputs)
    meta["provenance"] = provenance(meta, args.device)
    npz, js = save_feature_change(maps, args.out, meta)
    print(f"wrote {npz} and {js}")
    return 0
