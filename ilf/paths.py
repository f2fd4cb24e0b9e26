"""Where ILF keeps downloaded assets: one cache directory for offline compute nodes.

`ILF_CACHE` (default `~/.cache/ilf`) holds everything `ilf prefetch` downloads:
`hf/` is the Hugging Face hub cache (backbones, T5, CLIP, BERT), the other sub-folders hold
metric weights, prompt files and reference statistics.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The ILF cache root (`$ILF_CACHE`, default `~/.cache/ilf`)."""
    return Path(os.environ.get("ILF_CACHE", Path.home() / ".cache" / "ilf")).expanduser()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache inside the ILF cache (`$ILF_CACHE/hf`)."""
    return cache_dir() / "hf"


def asset_dir(kind: str) -> Path:
    """A sub-folder of the cache for one kind of asset (e.g. `imagereward`, `clip`, `fid_stats`)."""
    return cache_dir() / kind
