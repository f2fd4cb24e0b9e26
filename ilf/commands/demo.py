"""`ilf demo`: ILF and the cache on a tiny randomly initialised PixArt pipeline, with block-forward accounting.

Shows the public API end to end in seconds on a CPU: no weights are downloaded.
"""
from __future__ import annotations

import argparse

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-layers", type=int, default=28)


def run(args: argparse.Namespace) -> int:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    from ilf import (CacheConfig, FeedbackConfig, apply_cache, apply_feedback, count_block_forwards,
                     expected_block_forwards, remove)

    torch.manual_seed(0)
    n = args.num_layers
    transformer = PixArtTransformer2DModel(num_layers=n, attention_head_dim=8, num_attention_heads=2, sample_size=8,
                                           caption_channels=16, cross_attention_dim=16, use_additional_conditions=False)
    vae = AutoencoderKL(block_out_channels=(8,), latent_channels=4, norm_num_groups=4, layers_per_block=1)
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"))
    pipe.set_progress_bar_config(disable=True)
    emb = torch.randn(1, 4, 16)
    kw = dict(prompt_embeds=emb, prompt_attention_mask=torch.ones(1, 4), negative_prompt=None,
              negative_prompt_embeds=torch.zeros_like(emb), negative_prompt_attention_mask=torch.ones(1, 4),
              height=16, width=16, output_type="latent", use_resolution_binning=False)
    b, e = round(8 * n / 28), round(19 * n / 28)
    rows = [("baseline", None, 20, None), ("baseline", None, 12, None),
            ("cache", CacheConfig("inner", round(18 * n / 28), 3), 20, apply_cache),
            ("ILF", FeedbackConfig(b, e, "outer:4"), 10, apply_feedback)]
    print(f"{'method':10s} {'steps':>5s} {'analytic':>9s} {'measured':>9s}")
    for label, cfg, steps, apply in rows:
        if apply is not None:
            apply(pipe, cfg)
        with count_block_forwards(pipe) as counter:
            pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kw)
        print(f"{label:10s} {steps:5d} {expected_block_forwards(cfg, n, steps):9d} {counter.count:9d}")
        if apply is not None:
            remove(pipe)
    return 0
