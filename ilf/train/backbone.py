"""The frozen backbone a training run attaches feedback to: loading, its task, noise schedule and input shapes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, PixArtTransformer2DModel

from ..errors import ILFConfigError
from ..registry import BACKBONES, load_pipeline
from .config import TOY_BACKBONES


# registered backbones whose training data path (text encoder, VAE latents, objective) is not written yet
UNTRAINED_CLASSES = ("SanaTransformer2DModel", "QwenImageTransformer2DModel")


def load_backbone(name: str, torch_dtype: torch.dtype | None = None) -> Any:
    """A stock pipeline for a registry name, a toy backbone ("toy-t2i"/"toy-c2i"), or a local pipeline folder.

    Never downloads: registry weights come from the ILF cache (`ilf prefetch`), else MissingAssetError.
    """
    if name in TOY_BACKBONES:
        from ..toy.pipelines import load_toy_pipeline

        return load_toy_pipeline(name.split("-")[1], torch_dtype=torch_dtype or torch.float32)
    if name in BACKBONES:
        if BACKBONES[name].transformer_class in UNTRAINED_CLASSES:  # before loading any weights
            trainable = [n for n, s in BACKBONES.items() if s.transformer_class not in UNTRAINED_CLASSES]
            raise ILFConfigError("backbone", name, f"one of {', '.join(map(repr, trainable + list(TOY_BACKBONES)))}: "
                                 f"training and precomputing do not take {BACKBONES[name].transformer_class} yet")
        return load_pipeline(name, torch_dtype=torch_dtype)
    if Path(name).is_dir():
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(name, torch_dtype=torch_dtype, local_files_only=True)
    raise ILFConfigError("backbone", name, f"one of {', '.join(map(repr, tuple(BACKBONES) + TOY_BACKBONES))} "
                                           "or an existing local diffusers pipeline folder")


def task_of(transformer: torch.nn.Module) -> str:
    """"t2i" for PixArt (caption embeddings), "c2i" for DiT (class labels)."""
    if isinstance(transformer, PixArtTransformer2DModel):
        return "t2i"
    if isinstance(transformer, DiTTransformer2DModel):
        return "c2i"
    raise ILFConfigError("backbone", type(transformer).__name__, "a PixArtTransformer2DModel or DiTTransformer2DModel")


def training_noise_schedule(pipe: Any) -> DDPMScheduler:
    """The backbone's DDPM training schedule (betas, T) rebuilt from its pipeline's scheduler config."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def latent_channels(transformer: torch.nn.Module) -> int:
    """C: channels of x_t and of the noise prediction (learned-variance models output 2C)."""
    return int(transformer.config.in_channels)


def latent_side(transformer: torch.nn.Module) -> int:
    """The latent height/width the backbone was trained at (its `sample_size`)."""
    return int(transformer.config.sample_size)


def vae_scale_factor(pipe: Any) -> int:
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_max_sequence_length(name: str, pipe: Any) -> int:
    """Caption tokens the pipeline uses: toy 12, PixArt-alpha 120, PixArt-sigma 300."""
    if name == "toy-t2i":
        from ..toy.encoder import MAX_SEQUENCE_LENGTH

        return MAX_SEQUENCE_LENGTH
    if name in BACKBONES:
        return BACKBONES[name].max_sequence_length
    return 300 if type(pipe).__name__ == "PixArtSigmaPipeline" else 120


def null_class_label(transformer: torch.nn.Module) -> int:
    """DiT's null class (the label DiTPipeline uses for the unconditional branch): num_embeds_ada_norm."""
    return int(transformer.config.num_embeds_ada_norm)
