"""Small random-initialised stand-ins for the metric networks, built from the real classes.

They are for tests and offline smoke runs only: numbers they produce are meaningless. Each is
injected through the same loader the real weights go through (`load_image_reward(model=...)`,
`load_clip_model(model=...)`, `load_clipiqa(clip_model=...)`, `fid(... feature_extractor=...)`), or
written into a temporary cache folder so that the loaders' file paths are exercised too.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import numpy as np
import torch

_WORDS = ("a the of and in on with photo cat dog red blue green car tree house sky sea man woman "
          "painting art cute old big small beautiful portrait forest city night light water").split()


def write_tiny_bert_vocab(folder: Path) -> Path:
    """A BERT WordPiece vocab of a few dozen words (enough for a `BertTokenizer`)."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + letters + list(_WORDS)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def tiny_med_config(vocab_size: int, encoder_width: int = 32) -> dict:
    """BLIP's med_config.json with one small layer (hidden size stays 768: ImageReward's MLP(768))."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 64,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 2,
            "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size,
            "encoder_width": encoder_width, "add_cross_attention": True}


@contextlib.contextmanager
def tiny_blip_vit(width: int = 32) -> Iterator[None]:
    """Make ImageReward's BLIP build a one-layer ViT instead of ViT-L (its size is hard-coded)."""
    from ilf.metrics.image_reward import _imagereward_module

    blip_pretrain = _imagereward_module("ImageReward.models.BLIP.blip_pretrain")
    vit = _imagereward_module("ImageReward.models.BLIP.vit")

    def create_vit(*args, **kwargs):
        return vit.VisionTransformer(img_size=224, patch_size=32, embed_dim=width, depth=1, num_heads=2), width

    with mock.patch.object(blip_pretrain, "create_vit", create_vit):
        yield


def write_tiny_image_reward(cache_dir: Path, seed: int = 0) -> None:
    """Write a random ImageReward checkpoint + med_config + BERT vocab where the loader looks."""
    from ilf.metrics.assets import asset_location
    from ilf.metrics.image_reward import _init_tokenizer, build_image_reward

    bert = write_tiny_bert_vocab(asset_location("bert-base-uncased", cache_dir))
    folder = asset_location("imagereward-v1.0", cache_dir)
    n_vocab = len(_init_tokenizer(bert))
    (folder / "med_config.json").write_text(json.dumps(tiny_med_config(n_vocab)))
    torch.manual_seed(seed)
    with tiny_blip_vit():
        model = build_image_reward(folder / "med_config.json", bert)
    for p in model.mlp.parameters():  # ImageReward's init (std 1/769) makes a random head output ~0
        torch.nn.init.normal_(p, std=0.3)
    torch.save(model.state_dict(), folder / "ImageReward.pt")


def tiny_open_clip(seed: int = 0):
    """(model, preprocess, tokenizer): a 1-layer open_clip CLIP at 32 px with the real BPE tokenizer."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=16,
                           vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16,
                                                              image_size=32),
                           text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2,
                                                          layers=1))
    return model.eval(), open_clip.image_transform(32, is_train=False), open_clip.get_tokenizer("ViT-B-32")


def tiny_pyiqa_clip(seed: int = 0) -> torch.nn.Module:
    """pyiqa's own modified-ResNet CLIP class with widths of 8 (what CLIP-IQA wraps)."""
    from pyiqa.archs.clip_model import CLIP

    torch.manual_seed(seed)
    return CLIP(embed_dim=16, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                transformer_heads=1, transformer_layers=1).float().eval()


def write_tiny_clipiqa(cache_dir: Path, seed: int = 0) -> None:
    """Save a tiny pyiqa CLIP state dict where the CLIP-IQA loader looks for RN50.pt."""
    from ilf.metrics.assets import asset_location

    path = asset_location("clipiqa-rn50", cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_pyiqa_clip(seed).state_dict(), path)


def tiny_feature_extractor(dim: int = 8, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fixed random projection of 8x8-pooled pixels: (N, 3, H, W) in [0, 255] -> (N, dim)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(3 * 8 * 8, dim, generator=g) / 64.0

    def features(x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float().cpu(), 8).flatten(1)  # (N, 192)
        return torch.tanh(pooled @ proj / 16.0)

    return features


def write_random_images(folder: Path, n: int, size: int = 32, seed: int = 0, prefix: str = "") -> list[Path]:
    """`n` random RGB PNGs named `{prefix}{i:06d}.png`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths
