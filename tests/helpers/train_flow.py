"""Helpers for the flow-matching training tests (no tests here): tiny FLUX / SD3 pipelines with a stand-in caption
encoder, and tiny training configs.

The tiny pipelines have no text encoders (nothing to download); `with_caption_encoder` gives the pipeline an
`encode_prompt` with the family's own signature and return values, backed by a fixed random word embedding:
prompt embeddings (B, L, D), every one of the L = max_sequence_length positions filled (padding gets a pad vector,
as T5's padded outputs are not zero), and a pooled embedding (B, P).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel

from ilf.config import FeedbackConfig
from ilf.toy.data import VOCABULARY
from ilf.train.config import DataConfig, OptimConfig, TrainConfig

LOOP = (1, 3)  # FLUX 2 + 3 blocks: crosses the double/single boundary; SD3 6 blocks: before the last joint block
RESOLUTION = 16  # pixels = latent side (the tiny VAEs do not downsample): 8 x 8 = 64 image tokens
MAX_TOKENS = 8  # the toy captions have at most 7 words


def _word_table(dim: int, pooled: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(VOCABULARY) + 1, dim, generator=g), torch.randn(dim, pooled, generator=g) / dim ** 0.5


def embed_captions(captions: list[str], length: int, dim: int, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds (B, length, dim), pooled (B, pooled_dim)): word vectors then the pad vector; pooled = a fixed
    projection of the mean word vector."""
    table, proj = _word_table(dim, pooled_dim)
    index = {w: i for i, w in enumerate(VOCABULARY)}
    pad = len(VOCABULARY)
    ids = torch.full((len(captions), length), pad)
    for b, caption in enumerate(captions):
        words = [index[w] for w in caption.lower().split() if w in index][:length]
        ids[b, :len(words)] = torch.tensor(words, dtype=torch.long)
    emb = table[ids]
    return emb, emb.mean(1) @ proj


def with_caption_encoder(pipe: Any) -> Any:
    """`pipe` with an `encode_prompt` of its family's signature (FluxPipeline / StableDiffusion3Pipeline)."""
    cfg = pipe.transformer.config
    dim, pooled_dim = cfg.joint_attention_dim, cfg.pooled_projection_dim
    if isinstance(pipe.transformer, FluxTransformer2DModel):
        def encode_prompt(prompt, prompt_2=None, device=None, max_sequence_length=512, **kw):
            emb, pooled = embed_captions(list(prompt), max_sequence_length, dim, pooled_dim)
            return emb, pooled, torch.zeros(emb.shape[1], 3)
    else:
        def encode_prompt(prompt, prompt_2=None, prompt_3=None, device=None, do_classifier_free_guidance=True,
                          max_sequence_length=256, **kw):
            emb, pooled = embed_captions(list(prompt), max_sequence_length, dim, pooled_dim)
            return emb, None, pooled, None
    pipe.encode_prompt = encode_prompt
    return pipe


def flow_config(name: str, latents_dir: str | Path, **kw) -> TrainConfig:
    """A tiny training config for a flow-matching pipeline (the pipeline is passed to `train` directly)."""
    data = DataConfig(source="toy-shapes", latents_dir=str(latents_dir), num_samples=12, shard_size=5, batch_size=4,
                      max_sequence_length=MAX_TOKENS, resolution=RESOLUTION)
    cfg = dict(name=name, backbone=name, feedback=FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]), distill="fast",
               data=data, optim=OptimConfig(lr=1e-2), global_batch_size=4, micro_batch_size=2, iterations=4,
               checkpoint_interval=100, log_interval=1, device="cpu", teacher_steps=2)
    cfg.update(kw)
    return TrainConfig(**cfg).validate()
