"""CLIP score (Hessel et al. 2021, paper ref. [10]) with open_clip: 100 x max(cos(image, caption), 0).

The paper's prompt set for CLIP score is not public; this project scores images generated from the
MJHQ-30K prompts (`ilf.metrics.prompts.mjhq_prompts`). The model is a config choice
(`--clip-model MODEL:TAG`); the default is `ViT-L-14:openai` (OpenAI CLIP ViT-L/14, the model of
torchmetrics' CLIPScore default). Captions longer than CLIP's 77 tokens are truncated by the tokenizer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ilf.errors import MissingAssetError
from ilf.metrics.assets import DEFAULT_CLIP_MODEL, clip_asset_name, parse_clip_model, prefetch_command
from ilf.metrics.common import batches, check_paths, resolve_device
from ilf.paths import cache_dir as default_cache_dir


@dataclass
class ClipBundle:
    """An open_clip model with its eval transform and tokenizer."""
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str


def clip_score_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Row-wise 100 x max(cosine, 0) of (N, D) image and text embeddings."""
    cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
    return 100.0 * cos.clamp(min=0.0)


def _cached_weights(model_name: str, tag: str, cache_dir: Path | None) -> str:
    """Local path of open_clip weights inside the ILF cache; never downloads."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    if os.path.isfile(tag):
        return tag
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise ValueError(f"clip_model={model_name}:{tag!r}: open_clip has no pretrained tag {tag!r} for "
                         f"{model_name} (allowed: {open_clip.list_pretrained_tags_by_model(model_name)} or a file)")
    candidates: list[Path] = []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        for fn in [*_get_safe_alternatives(filename), filename]:
            hit = try_to_load_from_cache(repo, fn, cache_dir=str(root / "hf"))
            if isinstance(hit, str):
                return hit
        candidates.append(root / "hf" / repo)
    if cfg.get("url"):
        local = root / "hf" / os.path.basename(cfg["url"])
        if local.is_file():
            return str(local)
        candidates.append(local)
    name = clip_asset_name(f"{model_name}:{tag}")
    raise MissingAssetError(f"{name} (open_clip weights for CLIP score)", " or ".join(map(str, candidates)),
                            prefetch_command(name))


def load_clip_model(clip_model: str = DEFAULT_CLIP_MODEL, device: str | torch.device | None = None,
                    cache_dir: Path | None = None, model: torch.nn.Module | None = None,
                    preprocess: Callable | None = None, tokenizer: Callable | None = None) -> ClipBundle:
    """open_clip `MODEL:TAG` (TAG: pretrained tag in the cache, or a weights file), or injected parts."""
    import open_clip

    dev = resolve_device(device)
    model_name, tag = parse_clip_model(clip_model)
    if model is None:
        weights = _cached_weights(model_name, tag, cache_dir)
        # open_clip takes a tag's preprocessing from its pretrained config only when it downloads by tag;
        # from a local file it would use the defaults (OpenAI mean/std, bicubic, resize + centre crop).
        cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            image_mean=cfg.get("mean"), image_std=cfg.get("std"), image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"))
        tokenizer = open_clip.get_tokenizer(model_name)
    if preprocess is None or tokenizer is None:
        raise ValueError("an injected CLIP model needs its preprocess and tokenizer too")
    return ClipBundle(model.to(dev).eval(), preprocess, tokenizer, clip_model)


@torch.no_grad()
def clip_scores(bundle: ClipBundle, image_paths: Sequence[str | Path], captions: Sequence[str],
                batch_size: int = 32) -> np.ndarray:
    """Per-image CLIP score (already x100, clipped at 0)."""
    paths = check_paths(image_paths, ("captions", captions))
    dev = next(bundle.model.parameters()).device
    out = []
    items = list(zip(paths, captions))
    for batch in tqdm(list(batches(items, batch_size)), desc=f"CLIP score {bundle.name}", unit="batch"):
        images = torch.stack([bundle.preprocess(Image.open(p).convert("RGB")) for p, _ in batch]).to(dev)
        tokens = bundle.tokenizer([c for _, c in batch]).to(dev)
        img = bundle.model.encode_image(images)
        txt = bundle.model.encode_text(tokens)
        out.append(clip_score_from_embeddings(img, txt).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def clip_score(image_paths: Sequence[str | Path], captions: Sequence[str], clip_model: str = DEFAULT_CLIP_MODEL,
               device: str | torch.device | None = None, batch_size: int = 32, cache_dir: Path | None = None,
               **inject: Any) -> tuple[float, np.ndarray]:
    """(mean CLIP score, per-image CLIP scores), both x100."""
    scores = clip_scores(load_clip_model(clip_model, device, cache_dir, **inject), image_paths, captions, batch_size)
    return float(scores.mean()), scores
