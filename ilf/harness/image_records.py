"""A generated image and its record: the PNG reaches the disk before its record, and the record holds the PNG's
byte size and sha256 (`image_bytes`, `image_sha256`). A video row's records name clips instead (`clip_path`,
checked by `ilf.harness.clip_records.clip_problem`); `sample_problem` and `check_images` check either.

An image counts as done only while its file matches its record: present, of the recorded size and sha256.
Records written before these fields existed are checked by decoding the file instead. `ilf generate` makes
every image that fails the check again (its seed is its own, so the new file is the one an uninterrupted run
writes); `ilf metrics` refuses a row holding one, naming the file.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Iterable

from ..io import sha256_file, write_bytes_atomic

IMAGE_FIELDS = ("image_bytes", "image_sha256")


class DamagedImageError(ValueError):
    """A recorded image is missing, or its file no longer matches its record (size, sha256 or decoding)."""


def write_image(path: str | Path, image: Any) -> dict[str, Any]:
    """Write a PIL image as PNG to `path`, atomically and flushed to the disk.

    Args:
        path: the target file.
        image: a `PIL.Image.Image`.

    Returns:
        The record fields of the written file: `{"image_bytes": int, "image_sha256": str}`.
    """
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    return {"image_bytes": len(data), "image_sha256": hashlib.sha256(data).hexdigest()}


def _decode_problem(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # chunk structure and checksums
        with Image.open(path) as im:
            im.load()  # every pixel decodes
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib errors... for damaged files
        return f"does not decode as an image ({type(err).__name__}: {err})"
    return None


def image_problem(path: str | Path, record: dict[str, Any]) -> str | None:
    """What is wrong with a recorded image file, or None when it matches its record.

    Args:
        path: the image file the record names.
        record: its generation record; with `image_bytes` and `image_sha256` the file must match both, without
            them (older records) it must decode.

    Returns:
        None, or a short reason ("is missing", "has 0 bytes, its record says 1234", ...).
    """
    path = Path(path)
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if record.get("image_bytes") is not None and size != record["image_bytes"]:
        return f"has {size} bytes, its record says {record['image_bytes']}"
    if record.get("image_sha256"):
        if sha256_file(path) != record["image_sha256"]:
            return "does not match the sha256 in its record"
        return None
    if size == 0:
        return "is empty"
    return _decode_problem(path)


def sample_path(row_dir: str | Path, record: dict[str, Any]) -> Path:
    """The file (image) or folder (clip) a generation record names."""
    return Path(row_dir) / (record["clip_path"] if record.get("clip_path") else record["image_path"])


def sample_problem(row_dir: str | Path, record: dict[str, Any]) -> tuple[Path, str | None]:
    """(path, what is wrong with it or None) of the image or clip a generation record names."""
    from .clip_records import clip_problem

    path = sample_path(row_dir, record)
    return path, (clip_problem(path, record) if record.get("clip_path") else image_problem(path, record))


def check_images(row_dir: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Check every recorded image (or clip) of a row against its record.

    Args:
        row_dir: the row folder (records' `image_path` or `clip_path` is relative to it).
        records: the row's generation records.

    Raises:
        DamagedImageError: naming the first damaged file or clip, its reason and how many are damaged.
    """
    bad = [(path, reason) for r in records for path, reason in [sample_problem(row_dir, r)] if reason is not None]
    if bad:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more image(s) or clip(s) of this row)" if len(bad) > 1 else ""
        raise DamagedImageError(f"{path} {reason}{more}: run `ilf generate` for this row again (it makes such images "
                                f"again)")
