"""Provenance carried by every result record: config hash, git commit, versions, device, date."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = ("torch", "diffusers", "transformers", "ilf", "clean-fid", "open_clip_torch",
                    "image-reward", "pyiqa", "snakemake")


def config_hash(config: Any) -> str:
    """Short sha256 of a JSON-serialisable config (keys sorted), stable across runs."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The repository's HEAD commit (with `-dirty` when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        sha = res.stdout.strip() if res.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour affects results."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_name(device: Any = None) -> str:
    """Human-readable device: the CUDA card name, or the CPU model."""
    import torch

    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()})"


def provenance(config: Any = None, device: Any = None, **extra: Any) -> dict[str, Any]:
    """One flat dict to merge into a result record."""
    rec: dict[str, Any] = {
        "config_hash": config_hash(config) if config is not None else None,
        "git_commit": git_commit(),
        "versions": json.dumps(package_versions(), sort_keys=True),
        "device": device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(extra)
    return rec
