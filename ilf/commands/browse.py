"""`ilf browse`: a static, offline image browser of a workflow run (and the Snakemake report's image galleries)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ilf.commands import positive_int

DESCRIPTION = """Reads stored results only (generation.jsonl, metrics.jsonl, metrics_summary.json of every row).

    ilf browse --config results/toy/workflow_config.json --out results/toy/browse   # then open browse/index.html

Pick a table or figure group; for each prompt and seed every row's image is shown side by side with the row's
method, steps, block forwards and seconds and the image's metric values; sort by a metric, or by its difference
between two rows; pages; click an image to zoom. No server and no network: the folder's files only. Images are
linked (one relative link per image folder, never re-encoded); --copy-images hard-links or copies them instead,
so the folder can be moved on its own.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="workflow YAML or resolved workflow_config.json")
    parser.add_argument("--out", required=True, type=Path, help="the browser folder (new, empty or an earlier browser)")
    parser.add_argument("--copy-images", action="store_true",
                        help="hard-link (or copy) the images into the folder instead of linking the image folders")
    parser.add_argument("--gallery", type=Path, default=None,
                        help="also write the Snakemake report's galleries here: <tag>/<row>/<image>.png + labels.json")
    parser.add_argument("--gallery-images", type=positive_int, default=8, help="images per row in the galleries")


def run(args: argparse.Namespace) -> int:
    from ilf.harness.workflow_config import load_workflow_config
    from ilf.report.browse import read_images, write_browser, write_gallery

    config = load_workflow_config(args.config)
    images = read_images(config)  # every row's records before anything is written
    index = write_browser(config, args.out, args.copy_images, images)
    print(f"wrote {index} ({len(config['rows'])} rows); open it in a browser")
    if args.gallery is not None:
        labels = write_gallery(config, args.gallery, args.gallery_images, images)
        print(f"wrote the report galleries to {labels.parent}")
    return 0
