"""`ilf browse`: a static, offline image browser of a workflow run, and the image galleries of the Snakemake report.

The browser folder holds `index.html`, `browse.js`, `browse.css` (no server, no network: open index.html),
`data/index.js` (rows and groups) and `data/g<k>.js` (one table or figure group each, loaded when picked), and
`img/<folder>`: a relative link to each image folder of the run (or, with `copy_images`, hard links or copies of the
images, so the folder can be moved on its own). Images are never re-encoded.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ilf.report.browse_data import (BrowseGroup, RowImages, browse_groups, group_payload, metric_info, read_row_images,
                                    row_info)

ASSETS = Path(__file__).with_name("browse_assets")
MARKER = '<meta name="generator" content="ilf browse">'


def _json(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def compare_pair(group: BrowseGroup, rows: dict[str, dict[str, Any]]) -> list[str]:
    """The rows the browser compares first: the group's first ILF row (else its last row) and that row's reference
    (its `reference_row`, else the group's baseline with the most steps), when in the group."""
    names = list(group.rows)
    a = next((n for n in names if rows[n].get("method") == "ilf"), names[-1])
    ref = rows[a].get("reference_row")
    baselines = sorted((n for n in names if rows[n].get("method") == "baseline" and n != a),
                       key=lambda n: -(rows[n].get("steps") or 0))
    b = ref if ref in names and ref != a else (baselines[0] if baselines else "")
    return [a, b]


def _check_out(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (
            (out / "index.html").is_file() and MARKER in (out / "index.html").read_text(errors="replace"))):
        raise ValueError(f"{out} exists and is not a folder `ilf browse` wrote: give a new or empty folder")


def _link_images(images: dict[str, RowImages], img_dir: Path, final_img_dir: Path, copy: bool) -> dict[str, str]:
    """`img/<folder>` per image folder: a relative symlink, or hard links (copies across file systems)."""
    urls: dict[str, str] = {}
    done: set[str] = set()
    for name, row in images.items():
        folder = row.folder.name
        urls[name] = f"img/{folder}"
        if folder in done:
            continue
        done.add(folder)
        target = img_dir / folder
        if not copy:
            target.symlink_to(os.path.relpath(row.folder.resolve(), final_img_dir.resolve()), target_is_directory=True)
            continue
        for item in row.items:
            link_or_copy(row.folder / item["image"], target / item["image"])
    return urls


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link of `src` at `dst`, or a copy where the file system refuses (another device)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_images(config: dict[str, Any]) -> dict[str, RowImages]:
    """Every row's images, read before anything is written (a row without records is an error)."""
    return {r["name"]: read_row_images(r["name"], Path(r["generation_dir"])) for r in config["rows"]}


def write_browser(config: dict[str, Any], out: Path, copy_images: bool = False,
                  images: dict[str, RowImages] | None = None) -> Path:
    """Write the browser of a resolved workflow config's run into `out` (replacing an earlier one).

    Args:
        config: the resolved workflow config (`load_workflow_config`).
        out: the browser folder; must be new, empty, or an earlier browser.
        copy_images: hard-link (or copy) the images into the folder instead of linking each image folder.
        images: `read_images(config)` if already read.

    Returns:
        The path of `index.html`.

    Raises:
        FileNotFoundError: a row has no generation records.
        ValueError: `out` holds something else.
    """
    out = Path(out)
    _check_out(out)
    images = images if images is not None else read_images(config)
    rows = {r["name"]: r for r in config["rows"]}
    groups = browse_groups(config["rows"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "data").mkdir()
        (tmp / "img").mkdir()
        urls = _link_images(images, tmp / "img", out / "img", copy_images)
        entries, metric_names = [], {}
        for k, group in enumerate(groups):
            payload = group_payload(group, images, urls)
            metric_names.update(dict.fromkeys(payload["metrics"]))
            (tmp / "data" / f"g{k}.js").write_text(f"ILF_BROWSE_GROUP({_json(payload)});\n")
            entries.append({"id": group.id, "title": group.title, "file": f"data/g{k}.js", "rows": list(group.rows),
                            "items": len(payload["items"]), "compare": compare_pair(group, rows)})
        metric_names.update(dict.fromkeys(m for r in images.values() for m in r.summary_metrics))
        index = {"title": str(config.get("name") or config["out_dir"]), "world": config.get("world"),
                 "rows": {n: row_info(rows[n], images[n]) for n in rows}, "groups": entries,
                 "metrics": metric_info(list(metric_names))}
        (tmp / "data" / "index.js").write_text(f"window.ILF_BROWSE_INDEX = {_json(index)};\n")
        for asset in ("index.html", "browse.js", "browse.css"):
            shutil.copyfile(ASSETS / asset, tmp / asset)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _label(value: Any) -> str:
    """A label for the Snakemake report: a string without braces (it applies wildcards to label strings)."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("{", "(").replace("}", ")")


def write_gallery(config: dict[str, Any], out: Path, num_images: int = 8,
                  images: dict[str, RowImages] | None = None) -> Path:
    """The Snakemake report's per-row galleries: `out/<tag>/<row>/<index>.png` (hard links, or copies) of the
    first `num_images` images of every row under each tag of the row (table1, fig8, ...), and `out/labels.json`
    with every image's labels (row, method, steps, block forwards, seconds, prompt, per-image metric values).

    Args:
        config: the resolved workflow config.
        out: the gallery folder (replaced).
        num_images: images per row (the first by index, so the same prompts and seeds in every row).
        images: `read_images(config)` if already read.

    Returns:
        The path of `labels.json`.
    """
    from ilf.harness.workflow_config import row_tables

    out = Path(out)
    images = images if images is not None else read_images(config)
    if out.exists():
        shutil.rmtree(out)
    labels: dict[str, dict[str, str]] = {}
    for row in config["rows"]:
        data = images[row["name"]]
        for item in data.items[:num_images]:
            name = Path(item["image"]).name
            base = {"image": Path(name).stem, "row": row["name"], "method": str(row["method"]), "steps": str(row["steps"]),
                    "block forwards": _label(item["block_forwards"] if item["block_forwards"] is not None else "--"),
                    "seconds": _label(item["seconds"] if item["seconds"] is not None else "--"),
                    "prompt": _label(item["prompt"] if len(item["prompt"]) <= 80 else item["prompt"][:79] + "\u2026")}
            base.update({m: _label(v) for m, v in item["metrics"].items()})
            for tag in row_tables(row):
                rel = f"{tag}/{row['name']}/{name}"
                link_or_copy(data.folder / item["image"], out / rel)
                labels[rel] = base
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return out / "labels.json"
