"""The frozen backbone a training run attaches feedback to: loading, its task, noise schedule and input shapes.

Epsilon-prediction backbones (PixArt, DiT: a DDPM training schedule) and flow-matching ones (FLUX.1's
`FluxTransformer2DModel`, SD3.5's `SD3Transformer2DModel`, Qwen-Image's `QwenImageTransformer2DModel`: a
`FlowMatchEulerDiscreteScheduler`; Sana's `SanaTransformer2DModel`: DPM-Solver++ on flow sigmas) are told apart by
the transformer class and checked against the pipeline's scheduler (`objective_of`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (DDPMScheduler, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                       FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, PixArtTransformer2DModel,
                       QwenImageTransformer2DModel, SanaTransformer2DModel, SD3Transformer2DModel,
                       UniPCMultistepScheduler)

from ..errors import ILFConfigError
from ..registry import BACKBONES, load_pipeline, trainable_backbones, training_refusal
from .config import OBJECTIVES, TOY_BACKBONES

POOLED_MODELS = (FluxTransformer2DModel, SD3Transformer2DModel)  # flow matching with pooled prompt embeddings
FLOW_MODELS = (*POOLED_MODELS, QwenImageTransformer2DModel, SanaTransformer2DModel)  # text-to-image, flow matching


def check_trainable(name: str) -> None:
    """Raise `ILFConfigError` for a registered backbone `ilf train` / `ilf precompute` cannot take yet: a video
    backbone other than text-to-video Wan (`ilf.registry.training_refusal`). Called before any weights are
    read."""
    why = training_refusal(name)
    if why is None:
        return
    raise ILFConfigError("backbone", name, f"one of {', '.join(map(repr, trainable_backbones() + list(TOY_BACKBONES)))}: "
                                           f"{why}")


def load_backbone(name: str, torch_dtype: torch.dtype | None = None) -> Any:
    """A stock pipeline for a registry name, a toy backbone ("toy-t2i"/"toy-c2i"/"toy-flux"), or a local pipeline folder.

    Never downloads: registry weights come from the ILF cache (`ilf prefetch`), else MissingAssetError.
    """
    if name == "toy-flux":
        from ..toy.flux import load_toy_flux_pipeline

        return load_toy_flux_pipeline(torch_dtype=torch_dtype or torch.float32)
    if name in TOY_BACKBONES:
        from ..toy.pipelines import load_toy_pipeline

        return load_toy_pipeline(name.split("-")[1], torch_dtype=torch_dtype or torch.float32)
    if name in BACKBONES:
        check_trainable(name)  # before any weights are read
        return load_pipeline(name, torch_dtype=torch_dtype)
    if Path(name).is_dir():
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(name, torch_dtype=torch_dtype, local_files_only=True)
    raise ILFConfigError("backbone", name, f"one of {', '.join(map(repr, tuple(BACKBONES) + TOY_BACKBONES))} "
                                           "or an existing local diffusers pipeline folder")


def task_of(transformer: torch.nn.Module) -> str:
    """"t2i" for PixArt, FLUX, SD3, Qwen-Image and Sana (prompt embeddings), "c2i" for DiT (class labels), "t2v"
    for text-to-video Wan (`ilf.train.video`)."""
    if isinstance(transformer, (PixArtTransformer2DModel, *FLOW_MODELS)):
        return "t2i"
    if isinstance(transformer, DiTTransformer2DModel):
        return "c2i"
    from .video import check_video_transformer, is_video_model

    if is_video_model(transformer):
        check_video_transformer(transformer)
        return "t2v"
    raise ILFConfigError("backbone", type(transformer).__name__, "a PixArtTransformer2DModel, DiTTransformer2DModel, "
                                                                "FluxTransformer2DModel, SD3Transformer2DModel, "
                                                                "QwenImageTransformer2DModel, SanaTransformer2DModel "
                                                                "or WanTransformer3DModel")


def objective_of(name: str, pipe: Any) -> str:
    """The training objective `name` ("auto" | "epsilon" | "flow") resolved for a pipeline: "flow" for a
    flow-matching backbone (FLUX/SD3/Qwen-Image with a `FlowMatchEulerDiscreteScheduler`, Sana with a
    `DPMSolverMultistepScheduler` on flow sigmas), "epsilon" for a DDPM-trained one.

    Raises:
        ILFConfigError: `name` is not one of them, or contradicts the backbone.
    """
    if name not in OBJECTIVES:
        raise ILFConfigError("objective", name, OBJECTIVES)
    from .video import check_video_pipeline, is_video_model

    if is_video_model(pipe.transformer):  # Wan: flow matching, sampled by UniPC (flow sigmas) or Euler
        check_video_pipeline(pipe)
        if not is_flow_scheduler(pipe.scheduler):
            raise ILFConfigError("backbone", type(pipe.scheduler).__name__, "a flow-matching scheduler for Wan "
                                 "(UniPCMultistepScheduler with use_flow_sigmas, or FlowMatchEulerDiscreteScheduler)")
        if name not in ("auto", "flow"):
            raise ILFConfigError("objective", name, f"auto or flow for the {type(pipe.transformer).__name__} backbone")
        return "flow"
    flow = isinstance(pipe.transformer, FLOW_MODELS)
    if flow and not is_flow_scheduler(pipe.scheduler):
        raise ILFConfigError("backbone", type(pipe.scheduler).__name__,
                             f"a FlowMatchEulerDiscreteScheduler (or a DPMSolverMultistepScheduler with use_flow_sigmas) "
                             f"for the flow-matching {type(pipe.transformer).__name__}")
    found = "flow" if flow else "epsilon"
    if name not in ("auto", found):
        raise ILFConfigError("objective", name, f"auto or {found} for the {type(pipe.transformer).__name__} backbone")
    return found


def is_flow_scheduler(scheduler: Any) -> bool:
    """A flow-matching sampler: `FlowMatchEulerDiscreteScheduler`, or a multistep solver on flow sigmas predicting
    the velocity (`use_flow_sigmas`, `prediction_type="flow_prediction"`: SanaPipeline's
    `DPMSolverMultistepScheduler`, Wan's `UniPCMultistepScheduler`)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return True
    c = getattr(scheduler, "config", {})
    return (isinstance(scheduler, (DPMSolverMultistepScheduler, UniPCMultistepScheduler))
            and bool(c.get("use_flow_sigmas")) and c.get("prediction_type") == "flow_prediction")


def training_noise_schedule(pipe: Any) -> DDPMScheduler:
    """The backbone's DDPM training schedule (betas, T) rebuilt from its pipeline's scheduler config."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def latent_channels(transformer: torch.nn.Module) -> int:
    """C: channels of x_t and of the prediction (learned-variance models output 2C; FLUX's and Qwen-Image's 64
    input channels are 16 VAE channels packed 2x2, `FluxPipeline._pack_latents` / `QwenImagePipeline._pack_latents`)."""
    if isinstance(transformer, (FluxTransformer2DModel, QwenImageTransformer2DModel)):
        return int(transformer.config.in_channels) // 4
    return int(transformer.config.in_channels)


def latent_side(transformer: torch.nn.Module, pipe: Any = None) -> int:
    """The latent height/width the backbone was trained at: its `sample_size`, else the pipeline's
    `default_sample_size` (FLUX: 128, i.e. 1024 px)."""
    side = getattr(transformer.config, "sample_size", None)
    if side is None:
        side = getattr(pipe, "default_sample_size", None)
    if side is None:
        raise ILFConfigError("data.resolution", None, f"the image side in pixels ({type(transformer).__name__} has no "
                                                      "native sample size)")
    return int(side)


def latent_multiple(transformer: torch.nn.Module) -> int | None:
    """What the latent height and width of a flow-matching backbone must be multiples of (2 for FLUX's and
    Qwen-Image's 2x2 packing, `patch_size` for SD3 and Sana); None for backbones trained at their `sample_size`."""
    if isinstance(transformer, (FluxTransformer2DModel, QwenImageTransformer2DModel)):
        return 2
    if isinstance(transformer, FLOW_MODELS):
        return int(transformer.config.patch_size)
    return None


def caption_dim(transformer: torch.nn.Module) -> int:
    """D of the prompt embeddings the backbone reads: `caption_channels` (PixArt, Sana), `joint_attention_dim`
    (FLUX/SD3/Qwen-Image)."""
    if isinstance(transformer, (*POOLED_MODELS, QwenImageTransformer2DModel)):
        return int(transformer.config.joint_attention_dim)
    return int(transformer.config.caption_channels)


def pooled_dim(transformer: torch.nn.Module) -> int | None:
    """P of the pooled prompt embedding (FLUX: CLIP's 768, SD3: both CLIPs' 2048); None for backbones without one."""
    if isinstance(transformer, POOLED_MODELS):
        return int(transformer.config.pooled_projection_dim)
    return None


def vae_scale_factor(pipe: Any) -> int:
    """Pixels per latent along a side: 2^(levels - 1) of an `AutoencoderKL`; the pipeline's own `vae_scale_factor`
    for VAEs without `block_out_channels` (Qwen-Image's 2^len(temperal_downsample), Sana's DC-AE 32)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return 1
    if "block_out_channels" not in vae.config:
        return int(pipe.vae_scale_factor)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_max_sequence_length(name: str, pipe: Any) -> int:
    """Caption tokens the pipeline uses: toy 12, PixArt-alpha 120, PixArt-sigma 300, FLUX 512, SD3 256 (T5),
    Qwen-Image 512 (Qwen2.5-VL), Sana 300 (Gemma-2), Wan 512 (umT5; `WanPipeline.__call__`'s default)."""
    if name in ("toy-t2i", "toy-flux"):
        from ..toy.encoder import MAX_SEQUENCE_LENGTH

        return MAX_SEQUENCE_LENGTH
    if name in BACKBONES:
        return BACKBONES[name].max_sequence_length
    if isinstance(pipe.transformer, FluxTransformer2DModel):
        return 512
    if isinstance(pipe.transformer, SD3Transformer2DModel):
        return 256
    if isinstance(pipe.transformer, QwenImageTransformer2DModel):
        return 512
    if isinstance(pipe.transformer, SanaTransformer2DModel):
        return 300
    from .video import is_video_model

    if is_video_model(pipe.transformer):
        return 512
    return 300 if type(pipe).__name__ == "PixArtSigmaPipeline" else 120


def null_class_label(transformer: torch.nn.Module) -> int:
    """DiT's null class (the label DiTPipeline uses for the unconditional branch): num_embeds_ada_norm."""
    return int(transformer.config.num_embeds_ada_norm)
