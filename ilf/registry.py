"""The paper's five backbones (Sec. 4.1) and FLUX.1: hub ids, stock pipeline classes and transformer configs.

The transformer configs are copied from each repository's `transformer/config.json`, so the real
architectures can be built without weights (meta device: parameter counts, benchmarks with random
weights). `load_pipeline` never downloads: weights come from the local cache that `ilf prefetch`
fills, and a missing one raises `MissingAssetError` naming the repo, the cache and the command.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ILFConfigError, MissingAssetError
from .paths import hf_cache_dir

_PIXART_BASE: dict[str, Any] = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72, attention_type="default",
    caption_channels=4096, cross_attention_dim=1152, dropout=0.0, in_channels=4,
    norm_elementwise_affine=False, norm_eps=1e-6, norm_num_groups=32, norm_type="ada_norm_single",
    num_attention_heads=16, num_embeds_ada_norm=1000, num_layers=28, out_channels=8, patch_size=2,
    upcast_attention=False,
)
_DIT_XL_2: dict[str, Any] = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72, dropout=0.0, in_channels=4,
    norm_elementwise_affine=False, norm_type="ada_norm_zero", num_attention_heads=16, num_embeds_ada_norm=1000,
    num_layers=28, out_channels=8, patch_size=2, sample_size=32, upcast_attention=False,
)
# FLUX.1-dev / FLUX.1-schnell transformer/config.json as published on the hub (black-forest-labs; written from
# the published files, not downloaded here): 19 double-stream + 38 single-stream blocks, width 3072, about 11.9B
# parameters (tests/core/test_registry.py builds it on the meta device and counts them).
_FLUX_1: dict[str, Any] = dict(
    attention_head_dim=128, axes_dims_rope=[16, 56, 56], in_channels=64, joint_attention_dim=4096,
    num_attention_heads=24, num_layers=19, num_single_layers=38, patch_size=1, pooled_projection_dim=768,
)
# The schedulers the paper samples with: DPM-Solver++ (diffusers DPMSolverMultistepScheduler) on the
# backbones' own linear-beta training schedule.
DPM_SOLVER_PP: dict[str, Any] = dict(
    algorithm_type="dpmsolver++", beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
    prediction_type="epsilon", solver_order=2, solver_type="midpoint", lower_order_final=True,
    timestep_spacing="linspace", steps_offset=0,
)


@dataclass(frozen=True)
class BackboneSpec:
    """One pre-trained backbone of the paper."""

    name: str
    repo_id: str
    pipeline_class: str  # diffusers pipeline class name
    transformer_class: str  # diffusers transformer class name
    transformer_config: dict[str, Any] = field(hash=False)
    resolution: int = 512  # image side in pixels
    task: str = "t2i"  # "t2i" (text-to-image) or "c2i" (class-to-image)
    max_sequence_length: int = 120  # T5 tokens (PixArt-sigma: 300; FLUX.1-dev: 512)
    scheduler: str = "dpm-solver++"  # the sampler `load_pipeline` sets: the paper's, or "own" (the pipeline's)
    default_steps: int = 20  # the model card's sampling steps
    gated: bool = False  # the hub repo needs its licence accepted and a login before `hf download`

    @property
    def num_blocks(self) -> int:
        """N, the length of the block sequence (FLUX: double- plus single-stream blocks)."""
        return int(self.transformer_config["num_layers"]) + int(self.transformer_config.get("num_single_layers", 0))

    @property
    def download_command(self) -> str:
        """The `hf download` line that fetches the repo into the ILF cache (gated repos: log in first)."""
        line = f"hf download {self.repo_id} --cache-dir {hf_cache_dir()}"
        return f"hf auth login && {line}" if self.gated else line


#: The paper's five backbones by name (Sec. 4.1): `BackboneSpec`s with hub id, stock pipeline and transformer
#: classes, the transformer config (`num_layers` = N = 28), resolution in pixels and task (`"t2i"` / `"c2i"`);
#: e.g. `BACKBONES["dit-xl-2-256"].num_blocks == 28`. `load_pipeline(name)` loads one from the local cache.
BACKBONES: dict[str, BackboneSpec] = {
    "pixart-alpha-512": BackboneSpec("pixart-alpha-512", "PixArt-alpha/PixArt-XL-2-512x512", "PixArtAlphaPipeline",
                                     "PixArtTransformer2DModel", {**_PIXART_BASE, "sample_size": 64}, 512),
    "pixart-alpha-1024": BackboneSpec("pixart-alpha-1024", "PixArt-alpha/PixArt-XL-2-1024-MS", "PixArtAlphaPipeline",
                                      "PixArtTransformer2DModel", {**_PIXART_BASE, "sample_size": 128}, 1024),
    "pixart-sigma-512": BackboneSpec("pixart-sigma-512", "PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "PixArtSigmaPipeline",
                                     "PixArtTransformer2DModel",
                                     {**_PIXART_BASE, "sample_size": 64, "use_additional_conditions": False}, 512,
                                     max_sequence_length=300),
    "pixart-sigma-1024": BackboneSpec("pixart-sigma-1024", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
                                      "PixArtSigmaPipeline", "PixArtTransformer2DModel",
                                      {**_PIXART_BASE, "sample_size": 128, "use_additional_conditions": False,
                                       "interpolation_scale": 2}, 1024, max_sequence_length=300),
    "dit-xl-2-256": BackboneSpec("dit-xl-2-256", "facebook/DiT-XL-2-256", "DiTPipeline", "DiTTransformer2DModel",
                                 dict(_DIT_XL_2), 256, task="c2i"),
    # FLUX.1: flow matching, FlowMatchEulerDiscreteScheduler with the resolution-dependent shift (kept: "own")
    "flux1-dev": BackboneSpec("flux1-dev", "black-forest-labs/FLUX.1-dev", "FluxPipeline", "FluxTransformer2DModel",
                              {**_FLUX_1, "guidance_embeds": True}, 1024, max_sequence_length=512, scheduler="own",
                              default_steps=28, gated=True),
    "flux1-schnell": BackboneSpec("flux1-schnell", "black-forest-labs/FLUX.1-schnell", "FluxPipeline",
                                  "FluxTransformer2DModel", {**_FLUX_1, "guidance_embeds": False}, 1024,
                                  max_sequence_length=256, scheduler="own", default_steps=4),
}


def get_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ILFConfigError("backbone", name, tuple(BACKBONES))
    return BACKBONES[name]


def build_transformer(name: str, device: Any = "meta", dtype: Any = None):
    """The real architecture with random weights (on the meta device by default: no memory, no download)."""
    import diffusers
    import torch

    spec = get_backbone(name)
    cls = getattr(diffusers, spec.transformer_class)
    with torch.device(device):
        model = cls.from_config(spec.transformer_config)  # hub config.json keys; unknown ones are ignored
    return model.to(dtype) if dtype is not None else model


def dpm_solver_pp(scheduler_config: dict[str, Any] | None = None):
    """A DPM-Solver++ scheduler (the paper's sampler), from a pipeline's scheduler config if given."""
    from diffusers import DPMSolverMultistepScheduler

    if scheduler_config is None:
        return DPMSolverMultistepScheduler(**DPM_SOLVER_PP)
    return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++")


def local_snapshot(repo_id: str, cache_dirs: list[Path] | None = None) -> Path:
    """The local snapshot folder of a hub repo, searching the ILF cache then the default HF cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    dirs = cache_dirs if cache_dirs is not None else [hf_cache_dir(), Path(constants.HF_HUB_CACHE)]
    for d in dirs:
        try:
            return Path(snapshot_download(repo_id, cache_dir=str(d), local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            continue
    raise MissingAssetError(f"weights of {repo_id!r}", " and ".join(str(d) for d in dirs),
                            f"ilf prefetch --backbone <name>  (or: hf download {repo_id} --cache-dir "
                            f"{dirs[0]})")


def load_pipeline(name: str, torch_dtype: Any = None, device: Any = None, dpm_solver: bool = True):
    """The stock diffusers pipeline of a registered backbone (paper Sec. 4.1), from the local cache only.

    Never downloads: weights come from the ILF cache that `ilf prefetch --backbone NAME` fills (or the default
    Hugging Face cache).

    Args:
        name: a `BACKBONES` key, e.g. `"pixart-alpha-512"` or `"dit-xl-2-256"`.
        torch_dtype: the dtype to load the weights in (`from_pretrained`'s), e.g. `torch.float16`.
        device: where to move the pipeline (None: stays on the CPU).
        dpm_solver: replace the scheduler by DPM-Solver++ on the backbone's schedule, the paper's sampler (the
            PixArt and DiT backbones; FLUX.1 keeps its flow-matching scheduler).

    Returns:
        The stock pipeline (`PixArtAlphaPipeline`, `PixArtSigmaPipeline`, `DiTPipeline` or `FluxPipeline`).

    Raises:
        ILFConfigError: `name` is not a registered backbone.
        MissingAssetError: the weights are not in the local cache (one paragraph: repo id, cache directories,
            `ilf prefetch --backbone NAME`).

    Example:
        ```py
        pipe = ilf.load_pipeline("dit-xl-2-256", torch_dtype=torch.float16, device="cuda")
        ilf.apply_feedback(pipe, ilf.FeedbackConfig(8, 19))
        ```
    """
    import diffusers

    spec = get_backbone(name)
    try:
        path = local_snapshot(spec.repo_id)
    except MissingAssetError as err:
        gated = (f"{spec.repo_id} is gated: accept its licence on https://huggingface.co/{spec.repo_id} and log in "
                 "(`hf auth login`) before downloading") if spec.gated else ""
        raise MissingAssetError(f"weights of backbone {name!r} (hub repo {spec.repo_id!r})", err.location,
                                f"ilf prefetch --backbone {name}` (or `{spec.download_command}", gated) from None
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(str(path), torch_dtype=torch_dtype,
                                                                   local_files_only=True)
    if dpm_solver and spec.scheduler == "dpm-solver++":
        pipe.scheduler = dpm_solver_pp(pipe.scheduler.config)
    return pipe.to(device) if device is not None else pipe


def prefetch_backbone(name: str, cache_dir: Path | None = None) -> Path:
    """Download a backbone's diffusers folders into the ILF hub cache (run on a machine with internet)."""
    from huggingface_hub import snapshot_download

    spec = get_backbone(name)
    return Path(snapshot_download(spec.repo_id, cache_dir=str(cache_dir or hf_cache_dir()),
                                  ignore_patterns=["*.msgpack", "*.h5", "*.onnx", "*.ot", "*.pth", "*.pt", "*.ckpt"]))
