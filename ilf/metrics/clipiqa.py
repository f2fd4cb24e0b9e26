"""CLIP-IQA (Wang et al. AAAI 2023, paper ref. [47]) with pyiqa's `CLIPIQA` model, x100.

Every score is the CLIP-IQA procedure: the image (pixels in [0, 1], native resolution, CLIP
mean/std) and a pair of antonym prompts go through pyiqa's RN50 CLIP (no positional embedding),
the pair's logits are softmaxed, and the score is the probability of the first prompt.

- `clipiqa_good`: pyiqa's stock `clipiqa` score, the "standard CLIP-IQA score" the paper reports as
  "Good": pyiqa averages its five quality pairs, led by "Good image" / "bad image"
  (`STOCK_PAIRS`, read from pyiqa's model, not copied).
- attributes, one pair each, worded as in the CLIP-IQA paper (higher = more of the first word):
  `clipiqa_noisy` "Noisy photo." vs "Clean photo." (higher = noisier, the paper's down-arrow),
  `clipiqa_colorful` "Colorful photo." vs "Dull photo.", `clipiqa_natural` "Natural photo." vs
  "Synthetic photo.".
All pairs run in one CLIP forward per batch; a test checks each equals pyiqa's own forward with
that pair.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

from ilf.metrics.assets import require_asset
from ilf.metrics.common import batches, check_paths, resolve_device

ATTRIBUTE_PAIRS: dict[str, tuple[str, str]] = {
    "clipiqa_noisy": ("Noisy photo.", "Clean photo."),
    "clipiqa_colorful": ("Colorful photo.", "Dull photo."),
    "clipiqa_natural": ("Natural photo.", "Synthetic photo."),
}
CLIPIQA_METRICS = ("clipiqa_good", *ATTRIBUTE_PAIRS)


def _clipiqa_arch():
    """pyiqa's CLIP-IQA module (imports pyiqa; needs openai-clip, hence setuptools<81, and opencv)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import pyiqa.archs.clipiqa_arch as arch
    return arch


def _load_clip_checkpoint(path: Path) -> torch.nn.Module:
    """pyiqa's `clip_model.load(path, "cpu")`: a JIT archive (OpenAI's RN50.pt) or a state dict,
    rebuilt with pyiqa's `build_model` in float32. (pyiqa's own function re-reads a half-consumed
    file handle when the file is not a JIT archive; this opens the file afresh.)"""
    from pyiqa.archs.clip_model import build_model

    try:
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return build_model(state_dict).float().eval()


def load_clipiqa(device: str | torch.device | None = None, cache_dir: Path | None = None,
                 clip_model: torch.nn.Module | None = None) -> torch.nn.Module:
    """pyiqa's `CLIPIQA(model_type="clipiqa", backbone="RN50")` with RN50 read from the ILF cache.

    `clip_model` injects a (small) pyiqa CLIP instead of loading `clip/RN50.pt` (tests).
    """
    arch = _clipiqa_arch()
    if clip_model is None:
        clip_model = _load_clip_checkpoint(require_asset("clipiqa-rn50", cache_dir))
    with mock.patch.object(arch, "load", lambda *a, **k: clip_model):  # CLIPIQA calls load(backbone, "cpu")
        net = arch.CLIPIQA(model_type="clipiqa", backbone="RN50")
    net.ilf_device = resolve_device(device)  # CLIPIQA keeps CLIP in a list: moved to the input's device per call
    return net.to(net.ilf_device).eval()


def stock_pairs(net: torch.nn.Module) -> list[tuple[str, str]]:
    """pyiqa's quality prompt pairs, decoded from the model's own tokens."""
    from clip.simple_tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    texts = []
    for row in net.prompt_pairs.tolist():
        ids = [t for t in row[1:] if t not in (0, tok.encoder["<|endoftext|>"])]
        texts.append(tok.decode(ids).strip())
    return list(zip(texts[0::2], texts[1::2]))


def _pair_probs(net: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N, pairs) probability of each pair's first prompt, as in `CLIPIQA.forward`."""
    x = (x - net.default_mean.to(x)) / net.default_std.to(x)
    clip_model = net.clip_model[0].to(x)
    logits_per_image, _ = clip_model(x, tokens.to(x.device), pos_embedding=net.pos_embedding)
    return logits_per_image.reshape(x.shape[0], -1, 2).softmax(dim=-1)[..., 0]


@torch.no_grad()
def clipiqa_scores(net: torch.nn.Module, image_paths: Sequence[str | Path],
                   metrics: Sequence[str] = CLIPIQA_METRICS, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per-image CLIP-IQA scores x100 for each requested name in `CLIPIQA_METRICS`."""
    _clipiqa_arch()
    import clip
    from pyiqa.utils.img_util import imread2tensor

    bad = [m for m in metrics if m not in CLIPIQA_METRICS]
    if bad:
        raise ValueError(f"metrics={bad} are not CLIP-IQA scores: expected some of {list(CLIPIQA_METRICS)}")
    paths = check_paths(image_paths)
    n_stock = net.prompt_pairs.shape[0] // 2
    attrs = [m for m in metrics if m in ATTRIBUTE_PAIRS]
    attr_tokens = clip.tokenize([p for m in attrs for p in ATTRIBUTE_PAIRS[m]]) if attrs else net.prompt_pairs[:0]
    tokens = torch.cat([net.prompt_pairs, attr_tokens])
    dev = getattr(net, "ilf_device", torch.device("cpu"))
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for batch in tqdm(list(batches(paths, batch_size)), desc="CLIP-IQA", unit="batch"):
        imgs = [imread2tensor(str(p), rgb=True) for p in batch]
        groups = [torch.stack(imgs)] if len({t.shape for t in imgs}) == 1 else [t[None] for t in imgs]
        probs = torch.cat([_pair_probs(net, g.to(dev), tokens) for g in groups]).float().cpu()
        if "clipiqa_good" in out:
            out["clipiqa_good"].append(100.0 * probs[:, :n_stock].mean(dim=1).numpy())
        for k, m in enumerate(attrs):
            out[m].append(100.0 * probs[:, n_stock + k].numpy())
    return {m: np.concatenate(v).astype(np.float64) for m, v in out.items()}


def clipiqa(image_paths: Sequence[str | Path], metrics: Sequence[str] = CLIPIQA_METRICS,
            device: str | torch.device | None = None, batch_size: int = 8, cache_dir: Path | None = None,
            clip_model: torch.nn.Module | None = None) -> dict[str, tuple[float, np.ndarray]]:
    """name -> (mean x100, per-image x100) for the requested CLIP-IQA scores."""
    scores = clipiqa_scores(load_clipiqa(device, cache_dir, clip_model), image_paths, metrics, batch_size)
    return {m: (float(v.mean()), v) for m, v in scores.items()}
