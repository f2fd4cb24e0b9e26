"""Helpers for the flow-matching training tests (no tests here): tiny FLUX / SD3 / Qwen-Image / Sana pipelines with
a stand-in caption encoder, and tiny training configs.

The tiny pipelines have no text encoders (nothing to download); `with_caption_encoder` gives the pipeline an
`encode_prompt` with the family's own signature and return values, backed by a fixed random word embedding:
FLUX/SD3: prompt embeddings (B, L, D), every one of the L = max_sequence_length positions filled (padding gets a pad
vector, as T5's padded outputs are not zero), and a pooled embedding (B, P). Qwen-Image: the words' vectors, zero
padded to the batch's longest caption with its mask (None when every token is valid), as QwenImagePipeline's
`encode_prompt` returns them. Sana: L = max_sequence_length positions, the first one the complex human instruction's
vector when one is given (the token SanaPipeline keeps of it), then the words, then pad vectors masked out; with
`do_classifier_free_guidance` also the negative prompt's, encoded without the instruction. Every call's keyword
arguments are appended to `pipe.encode_calls`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, SanaTransformer2DModel

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


def word_ids(captions: list[str], length: int) -> list[list[int]]:
    """The toy vocabulary's word indices of each caption (unknown words dropped), at most `length`."""
    index = {w: i for i, w in enumerate(VOCABULARY)}
    return [[index[w] for w in c.lower().split() if w in index][:length] for c in captions]


def qwen_encode(captions: list[str], dim: int, max_sequence_length: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """QwenImagePipeline.encode_prompt's outputs for the stand-in encoder: (B, longest, dim), its mask or None.
    A caption without known words keeps one token (the pad vector), as the template's end token would."""
    table, _ = _word_table(dim, 1, seed=1)
    ids = [w or [len(VOCABULARY)] for w in word_ids(captions, max_sequence_length)]
    longest = max(len(w) for w in ids)
    emb, mask = torch.zeros(len(ids), longest, dim), torch.zeros(len(ids), longest, dtype=torch.long)
    for b, w in enumerate(ids):
        emb[b, :len(w)], mask[b, :len(w)] = table[torch.tensor(w)], 1
    return emb, (None if bool(mask.all()) else mask)


def sana_encode(captions: list[str], dim: int, length: int, instruction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SanaPipeline._get_gemma_prompt_embeds' outputs after `select_index` for the stand-in encoder: (B, length,
    dim) and the right-padded mask; with `instruction` the first position is the instruction's vector (the negated
    first word vector), else an empty caption keeps one valid (BOS) position of the pad vector."""
    table, _ = _word_table(dim, 1, seed=2)
    pad = table[len(VOCABULARY)]
    emb, mask = pad.expand(len(captions), length, dim).clone(), torch.zeros(len(captions), length, dtype=torch.long)
    for b, w in enumerate(word_ids(captions, length - 1)):
        rows = ([-table[0]] if instruction else []) + [table[i] for i in w]
        if rows:
            emb[b, :len(rows)] = torch.stack(rows)
        mask[b, :max(len(rows), 1)] = 1
    return emb, mask


def with_caption_encoder(pipe: Any) -> Any:
    """`pipe` with an `encode_prompt` of its family's signature (FluxPipeline / StableDiffusion3Pipeline /
    QwenImagePipeline / SanaPipeline); each call's keyword arguments are appended to `pipe.encode_calls`."""
    cfg = pipe.transformer.config
    pipe.encode_calls = []
    if isinstance(pipe.transformer, QwenImageTransformer2DModel):
        def encode_prompt(prompt, device=None, num_images_per_prompt=1, prompt_embeds=None, prompt_embeds_mask=None,
                          max_sequence_length=1024):
            pipe.encode_calls.append(dict(prompt=list(prompt), max_sequence_length=max_sequence_length))
            return qwen_encode(list(prompt), cfg.joint_attention_dim, max_sequence_length)
        pipe.encode_prompt = encode_prompt
        return pipe
    if isinstance(pipe.transformer, SanaTransformer2DModel):
        def encode_prompt(prompt, do_classifier_free_guidance=True, negative_prompt="", num_images_per_prompt=1,
                          device=None, prompt_embeds=None, negative_prompt_embeds=None, prompt_attention_mask=None,
                          negative_prompt_attention_mask=None, clean_caption=False, max_sequence_length=300,
                          complex_human_instruction=None, lora_scale=None):
            pipe.encode_calls.append(dict(prompt=list(prompt), do_classifier_free_guidance=do_classifier_free_guidance,
                                          negative_prompt=negative_prompt, max_sequence_length=max_sequence_length,
                                          complex_human_instruction=complex_human_instruction))
            dim = cfg.caption_channels
            emb, mask = sana_encode(list(prompt), dim, max_sequence_length, bool(complex_human_instruction))
            if not do_classifier_free_guidance:
                return emb, mask, None, None
            neg, neg_mask = sana_encode([negative_prompt] * len(prompt), dim, max_sequence_length, False)
            return emb, mask, neg, neg_mask
        pipe.encode_prompt = encode_prompt
        return pipe
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


def flow_config(name: str, latents_dir: str | Path, resolution: int = RESOLUTION, **kw) -> TrainConfig:
    """A tiny training config for a flow-matching pipeline (the pipeline is passed to `train` directly)."""
    data = DataConfig(source="toy-shapes", latents_dir=str(latents_dir), num_samples=12, shard_size=5, batch_size=4,
                      max_sequence_length=MAX_TOKENS, resolution=resolution)
    cfg = dict(name=name, backbone=name, feedback=FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]), distill="fast",
               data=data, optim=OptimConfig(lr=1e-2), global_batch_size=4, micro_batch_size=2, iterations=4,
               checkpoint_interval=100, log_interval=1, device="cpu", teacher_steps=2)
    cfg.update(kw)
    return TrainConfig(**cfg).validate()
