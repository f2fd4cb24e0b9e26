"""ImageReward (Xu et al. 2023) with the official `image-reward` package and benchmark procedure.

Official procedure (THUDM/ImageReward `benchmark/`): the 100 benchmark prompts, 10 images per
prompt, the reward of each image, the mean per prompt, then the mean across prompts. The paper
reports that number x100. The reward is the package's own normalised score
`(mlp(features) - mean) / std` with its constants `mean=0.16717...`, `std=1.03333...`; the
normalisation is applied once, here in `_normalise`, exactly as `ImageReward.score` does.

The package was written for transformers 4; `ilf.metrics.image_reward_compat` holds the four small
shims it needs on transformers 5, applied only while its modules are imported and its model is built
here (no-ops on transformers 4). A test asserts equal scores to the package on transformers 4.55.4.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Sequence
from unittest import mock

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ilf.metrics import image_reward_compat as compat
from ilf.metrics.assets import require_asset
from ilf.metrics.common import batches, check_paths, grouped_mean, resolve_device

log = logging.getLogger(__name__)

OFFICIAL_NUM_PROMPTS, OFFICIAL_IMAGES_PER_PROMPT = 100, 10
TEXT_MAX_LENGTH = 35  # the package tokenises prompts to 35 BERT tokens (padding + truncation)


def _imagereward_module(name: str = "ImageReward.ImageReward"):
    """A module of the `image-reward` package without running the package `__init__`.

    The package `__init__` also imports its ReFL training script (needs `datasets`, diffusers
    training utilities); the reward model lives in `ImageReward/ImageReward.py` and does not.
    """
    if "ImageReward" not in sys.modules:
        spec = importlib.util.find_spec("ImageReward")
        if spec is None:
            raise ModuleNotFoundError("image-reward is not installed: pip install --no-deps image-reward==1.5",
                                      name="ImageReward")
        sys.modules["ImageReward"] = importlib.util.module_from_spec(spec)  # namespace only, not executed
    with compat.med_import_names():
        return importlib.import_module(name)


def _init_tokenizer(bert_dir: Path):
    """BLIP's `init_tokenizer`, reading bert-base-uncased from the cache instead of the hub."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")  # additional_special_tokens_ids[0] on 4.x
    return tokenizer


def build_image_reward(med_config: Path, bert_dir: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The package's `ImageReward(med_config, device)` (random weights), tokenizer read from `bert_dir`."""
    ir = _imagereward_module()
    blip_pretrain = _imagereward_module("ImageReward.models.BLIP.blip_pretrain")
    with mock.patch.object(blip_pretrain, "init_tokenizer", lambda: _init_tokenizer(bert_dir)), \
            compat.post_init_on_construction(blip_pretrain.BertModel):
        model = ir.ImageReward(med_config=str(med_config), device=device)
    compat.add_mask_helpers(model.blip.text_encoder)
    return model


def load_image_reward(device: str | torch.device | None = None, cache_dir: Path | None = None,
                      model: torch.nn.Module | None = None) -> torch.nn.Module:
    """`ImageReward-v1.0` from the ILF cache (or an injected model of the same class, for tests)."""
    dev = resolve_device(device)
    if model is None:
        folder = require_asset("imagereward-v1.0", cache_dir)
        bert_dir = require_asset("bert-base-uncased", cache_dir)
        model = build_image_reward(folder / "med_config.json", bert_dir, dev)
        state = torch.load(folder / "ImageReward.pt", map_location="cpu", weights_only=True)
        res = model.load_state_dict(state, strict=False)  # strict=False as in ImageReward.load
        if res.missing_keys:
            log.warning("ImageReward checkpoint lacks %d keys, e.g. %s", len(res.missing_keys), res.missing_keys[:3])
    compat.add_mask_helpers(model.blip.text_encoder)
    model.device = dev
    return model.to(dev).eval()


def _normalise(raw: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """The package's reward normalisation, applied exactly once."""
    return (raw - model.mean) / model.std


@torch.no_grad()
def image_reward_scores(model: torch.nn.Module, image_paths: Sequence[str | Path], prompts: Sequence[str],
                        batch_size: int = 16) -> np.ndarray:
    """Per-image ImageReward (not x100): the same computation as `ImageReward.score`, batched."""
    paths = check_paths(image_paths, ("prompts", prompts))
    dev = next(model.parameters()).device
    out: list[np.ndarray] = []
    items = list(zip(paths, prompts))
    for batch in tqdm(list(batches(items, batch_size)), desc="ImageReward", unit="batch"):
        text = model.blip.tokenizer([p for _, p in batch], padding="max_length", truncation=True,
                                    max_length=TEXT_MAX_LENGTH, return_tensors="pt").to(dev)
        images = torch.stack([model.preprocess(Image.open(p)) for p, _ in batch]).to(dev)
        image_embeds = model.blip.visual_encoder(images)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=dev)
        text_output = model.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                              encoder_hidden_states=image_embeds,
                                              encoder_attention_mask=image_atts, return_dict=True)
        raw = model.mlp(text_output.last_hidden_state[:, 0, :].float())  # (B, 1)
        out.append(_normalise(raw, model)[:, 0].cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def image_reward_value(scores: np.ndarray, prompt_ids: Sequence) -> float:
    """Benchmark value x100: mean per prompt, then across prompts (not the flat image mean)."""
    counts: dict = {}
    for pid in prompt_ids:
        counts[pid] = counts.get(pid, 0) + 1
    if len(counts) != OFFICIAL_NUM_PROMPTS or set(counts.values()) != {OFFICIAL_IMAGES_PER_PROMPT}:
        log.warning("ImageReward over %d prompts with %s images each: the official benchmark is 100 x 10",
                    len(counts), sorted(set(counts.values())))
    return 100.0 * grouped_mean(scores, prompt_ids)


def image_reward(image_paths: Sequence[str | Path], prompts: Sequence[str], prompt_ids: Sequence,
                 device: str | torch.device | None = None, batch_size: int = 16, cache_dir: Path | None = None,
                 model: torch.nn.Module | None = None) -> tuple[float, np.ndarray]:
    """(benchmark value x100, per-image rewards x100) over a list of images and their prompts."""
    scores = image_reward_scores(load_image_reward(device, cache_dir, model), image_paths, prompts, batch_size)
    return image_reward_value(scores, prompt_ids), 100.0 * scores
