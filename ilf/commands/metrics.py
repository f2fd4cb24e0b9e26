"""`ilf metrics`: score generation rows with the paper's (or the toy world's) metrics."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Reads <row_dir>/generation.jsonl and its images (--generation-dir is repeatable: the rows are scored one
after the other in one process, each as when scored alone), writes <row_dir>/metrics.jsonl (one record per image)
and <row_dir>/metrics_summary.json (value, 95% bootstrap CI, n, reference per metric, provenance).

Metric names: image_reward, clip_score, clipiqa_good, clipiqa_noisy, clipiqa_colorful,
clipiqa_natural, fid_mjhq, fid_imagenet (paper metrics; weights and reference statistics come
from the ILF cache, filled by `ilf prefetch`), toy_fid, toy_kid, toy_adherence, toy_class_accuracy (toy world),
psnr_ref, ssim_ref, lpips_ref (both worlds: each image against the image of the same prompt and seed in the
row's reference row, --reference-dir; the reference row itself gets no value).

  ilf metrics --generation-dir results/paper/rows/alpha512_ilf --metrics image_reward,clipiqa_good
  ilf metrics --generation-dir results/toy/rows/A --reference-dir results/toy/rows/REF \
              --generation-dir results/toy/rows/B --reference-dir results/toy/rows/REF --metrics psnr_ref,ssim_ref
  ilf metrics --generation-dir results/paper/rows/dit_ilf --metrics fid_imagenet --fid-ref imagenet_train_256

Reference statistics (once, on a machine with the images):
  ilf metrics --make-fid-ref imagenet_train_256 --ref-images /data/ILSVRC2012/train --ref-resolution 256
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ilf.metrics.assets import DEFAULT_CLIP_MODEL

    p.add_argument("--generation-dir", type=Path, action="append",
                   help="row folder holding generation.jsonl and images/ (repeatable)")
    p.add_argument("--reference-dir", type=Path, action="append",
                   help="folder of the row the *_ref metrics compare with: one per --generation-dir, in the same "
                   "order, or one for all")
    p.add_argument("--metrics", default=None, help="comma-separated metric names")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="open_clip MODEL:TAG for clip_score "
                   f"(default {DEFAULT_CLIP_MODEL})")
    p.add_argument("--fid-ref", default=None, help="reference statistics name (default: mjhq30k_1024 for "
                   "fid_mjhq, imagenet_train_256 for fid_imagenet)")
    p.add_argument("--fid-mode", default="clean", help="clean-fid mode (default clean)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    g = p.add_argument_group("making FID reference statistics")
    g.add_argument("--make-fid-ref", metavar="NAME", help="build clean-fid stats NAME (e.g. imagenet_train_256)")
    g.add_argument("--ref-images", type=Path, help="folder of reference images (searched recursively)")
    g.add_argument("--ref-resolution", type=int, default=None,
                   help="centre-crop (ADM) the reference images to this size first (ImageNet: 256)")
    g.add_argument("--ref-num", type=int, default=None,
                   help="seeded random subset size when centre-cropping (default 50000; 0 = all)")


def _make_ref(args: argparse.Namespace) -> int:
    from ilf.metrics.fid import make_reference_stats, prepare_reference_images
    from ilf.paths import asset_dir

    if args.ref_images is None:
        raise ValueError("--make-fid-ref needs --ref-images DIR")
    image_dir = args.ref_images
    if args.ref_resolution:
        num = 50_000 if args.ref_num is None else (args.ref_num or None)
        image_dir = asset_dir("fid_ref_images") / args.make_fid_ref
        prepare_reference_images(args.ref_images, image_dir, args.ref_resolution, num, args.seed)
    out = make_reference_stats(args.make_fid_ref, image_dir, args.fid_mode, device=args.device,
                               batch_size=args.batch_size)
    print(f"[metrics] reference statistics written to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.make_fid_ref:
        return _make_ref(args)
    from ilf.metrics import compute_row_metrics
    from ilf.metrics.fidelity import REFERENCE_METRICS
    from ilf.metrics.records import read_generation
    from ilf.metrics.registry import MetricOptions, parse_metric_names

    if args.generation_dir is None or args.metrics is None:
        raise ValueError("--generation-dir and --metrics are required (or --make-fid-ref)")
    parse_metric_names(args.metrics)  # a misspelt name is refused before any image is read
    opts = MetricOptions(clip_model=args.clip_model, fid_ref=args.fid_ref, fid_mode=args.fid_mode,
                         batch_size=args.batch_size, device=args.device, seed=args.seed)
    refs = args.reference_dir or []
    if len(refs) not in (0, 1, len(args.generation_dir)):
        raise ValueError(f"{len(refs)} --reference-dir for {len(args.generation_dir)} --generation-dir: give one per "
                         "--generation-dir (same order) or one for all")
    refs = refs * len(args.generation_dir) if len(refs) == 1 else refs or [None] * len(args.generation_dir)
    records = {}
    for row_dir in [*args.generation_dir, *(r for r in refs if r)]:  # every folder is checked before any is scored
        if not (row_dir / "generation.jsonl").is_file():
            raise FileNotFoundError(f"{row_dir / 'generation.jsonl'} is missing: run `ilf generate` for this row first")
    for row_dir in args.generation_dir:  # and every image of every row (nothing half-done)
        records[row_dir] = read_generation(row_dir)
    references = {}  # each reference folder read (and its images checked) once, however many rows share it
    if set(parse_metric_names(args.metrics)) & set(REFERENCE_METRICS):
        for row_dir, ref in zip(args.generation_dir, refs):  # every pairing too
            references[row_dir] = check_reference(row_dir, records[row_dir], ref, references)
    for row_dir, ref in zip(args.generation_dir, refs):
        summary = compute_row_metrics(row_dir, args.metrics, opts, records=records[row_dir], reference_dir=ref,
                                      reference=references.get(row_dir))
        print(f"{row_dir}: " + json.dumps({k: None if v["value"] is None else round(v["value"], 4)
                                           for k, v in summary["metrics"].items()}))
    return 0


def check_reference(row_dir: Path, records: list[dict], reference_dir: Path | None,
                    known: dict[Path, "ReferenceRow"]) -> "ReferenceRow":
    """The row's reference row (read once per folder: `known` holds those read so far), after checking that every
    image of the row has its reference image; raises before anything is written."""
    from ilf.metrics import reference_row
    from ilf.metrics.fidelity import ReferenceRow, pair_with_reference
    from ilf.metrics.records import row_name

    if reference_dir is None:
        raise ValueError(f"{row_dir}: the *_ref metrics need its reference row's folder (--reference-dir)")
    if reference_dir.resolve() == row_dir.resolve():  # the reference row itself: its own records
        return ReferenceRow(row_name(records, row_dir), row_dir, records)
    reference = next((r for r in known.values() if r.row_dir.resolve() == reference_dir.resolve()), None)
    reference = reference or reference_row(reference_dir)
    pair_with_reference(records, reference, row_name(records, row_dir))
    return reference
