"""The paper's five backbones (Sec. 4.1) and the newer ones ILF supports: hub ids, pipelines, transformer configs.

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
# Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers transformer/config.json as published (written from the published
# files, not downloaded here; tests/adapters/test_wan_registry.py checks the parameter counts: 1.42B and 14.29B).
_WAN21_T2V: dict[str, Any] = dict(
    added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-6, freq_dim=256, image_dim=None,
    in_channels=16, out_channels=16, patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    text_dim=4096,
)
# Stable Diffusion 3.5 (stabilityai, gated repos): transformer/config.json as published on the hub (copied from the
# published files, not downloaded here; checked by the parameter counts in tests/adapters/test_sd3.py: medium 2.24B
# parameters + the 0.23B pos_embed buffer = the published 2.5B, large 8.06B + 0.09B = 8.1B). Every block is a JointTransformerBlock; the last is context_pre_only. Medium's blocks 0..12 add a
# second image self-attention (MMDiT-X, `dual_attention_layers`).
_SD35_MEDIUM: dict[str, Any] = dict(
    attention_head_dim=64, caption_projection_dim=1536, dual_attention_layers=tuple(range(13)), in_channels=16,
    joint_attention_dim=4096, num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2,
    pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm", sample_size=128,
)
_SD35_LARGE: dict[str, Any] = dict(
    attention_head_dim=64, caption_projection_dim=2432, in_channels=16, joint_attention_dim=4096,
    num_attention_heads=38, num_layers=38, out_channels=16, patch_size=2, pooled_projection_dim=2048,
    pos_embed_max_size=192, qk_norm="rms_norm", sample_size=128,
)
# Sana 1600M at 1024 px (Efficient-Large-Model/Sana_1600M_1024px_diffusers, transformer/config.json as published;
# written from the published file, not downloaded here): 20 linear-attention blocks, D = 2240, 1,604,462,752
# parameters (tests/adapters/test_sana.py). Samples with its own flow DPM-Solver++ (flow_shift 3), 20 steps, CFG 4.5.
_SANA_1600M_1024: dict[str, Any] = dict(
    attention_bias=False, attention_head_dim=32, caption_channels=2304, cross_attention_dim=2240,
    cross_attention_head_dim=112, dropout=0.0, in_channels=32, interpolation_scale=None, mlp_ratio=2.5,
    norm_elementwise_affine=False, norm_eps=1e-6, num_attention_heads=70, num_cross_attention_heads=20,
    num_layers=20, out_channels=32, patch_size=1, sample_size=32,
)
# Qwen-Image (Qwen/Qwen-Image, transformer/config.json as published, written from the published file; its
# `pooled_projection_dim: 768` is not an argument of the class and is left out): 60 dual-stream blocks, D = 3072,
# 20,430,401,088 parameters (tests/adapters/test_qwenimage.py). Samples with its own flow-matching Euler
# scheduler (dynamic shift), 50 steps, true CFG 4.0 as two transformer calls per step.
_QWEN_IMAGE: dict[str, Any] = dict(
    attention_head_dim=128, axes_dims_rope=(16, 56, 56), guidance_embeds=False, in_channels=64,
    joint_attention_dim=3584, num_attention_heads=24, num_layers=60, out_channels=16, patch_size=2,
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
    resolution: int = 512  # image side in pixels (video: the height)
    task: str = "t2i"  # "t2i" (text-to-image), "c2i" (class-to-image) or "t2v" (text-to-video)
    max_sequence_length: int = 120  # text tokens (PixArt-sigma: 300, SD3.5: 256, Sana: 300, Qwen-Image / Wan's umT5: 512)
    width: int | None = None  # frame width in pixels where it differs from `resolution` (Wan 480p: 832)
    num_frames: int = 1  # video: frames per clip (Wan 2.1: 81, 5 s at 16 fps)
    sampler: str = "dpm-solver++"  # "dpm-solver++" (the paper's) or "pipeline" (the pipeline's own: flow matching)
    default_steps: int = 20  # sampling steps of the backbone's own recommended setting (the model card's)
    gated: bool = False  # the hub repo asks to accept a license before downloading (log in with `hf auth login`)

    @property
    def num_blocks(self) -> int:
        """N, the length of the block sequence (FLUX: double- plus single-stream blocks)."""
        return int(self.transformer_config["num_layers"]) + int(self.transformer_config.get("num_single_layers", 0))


#: The backbones by name: the paper's five (Sec. 4.1, N = 28), FLUX.1-dev / -schnell (19 + 38 = 57), SD3.5 medium / large (24 / 38), Sana-1.6B (20),
#: Qwen-Image (60) and Wan 2.1 T2V 1.3B / 14B (30 / 40): `BackboneSpec`s with hub id, stock pipeline and transformer
#: classes, the transformer config (`num_layers` = N), resolution in pixels, task (`"t2i"` / `"c2i"` / `"t2v"`),
#: sampler and default steps; e.g. `BACKBONES["dit-xl-2-256"].num_blocks == 28`. `load_pipeline(name)` loads one
#: from the local cache.
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
    # Wan 2.1 text-to-video at 480p (832x480, 81 frames, 50 UniPC flow steps, guidance 5; the model cards).
    "wan21-t2v-1.3b": BackboneSpec("wan21-t2v-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline",
                                   "WanTransformer3DModel",
                                   {**_WAN21_T2V, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
                                   480, task="t2v", max_sequence_length=512, width=832, num_frames=81,
                                   default_steps=50, sampler="pipeline"),
    "wan21-t2v-14b": BackboneSpec("wan21-t2v-14b", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanPipeline",
                                  "WanTransformer3DModel",
                                  {**_WAN21_T2V, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
                                  480, task="t2v", max_sequence_length=512, width=832, num_frames=81,
                                  default_steps=50, sampler="pipeline"),
    # flow matching (FlowMatchEulerDiscreteScheduler, shift 3.0): the pipeline's own sampler; steps and guidance
    # as the model cards recommend (medium 40 steps, CFG 4.5; large 28 steps, CFG 3.5)
    "sd35-medium": BackboneSpec("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline",
                                "SD3Transformer2DModel", dict(_SD35_MEDIUM), 1024, max_sequence_length=256,
                                sampler="pipeline", default_steps=40, gated=True),
    "sd35-large": BackboneSpec("sd35-large", "stabilityai/stable-diffusion-3.5-large", "StableDiffusion3Pipeline",
                               "SD3Transformer2DModel", dict(_SD35_LARGE), 1024, max_sequence_length=256,
                               sampler="pipeline", default_steps=28, gated=True),
    "sana-1600m-1024": BackboneSpec("sana-1600m-1024", "Efficient-Large-Model/Sana_1600M_1024px_diffusers",
                                    "SanaPipeline", "SanaTransformer2DModel", dict(_SANA_1600M_1024), 1024,
                                    max_sequence_length=300, sampler="pipeline", default_steps=20),
    "qwen-image": BackboneSpec("qwen-image", "Qwen/Qwen-Image", "QwenImagePipeline", "QwenImageTransformer2DModel",
                               dict(_QWEN_IMAGE), 1328, max_sequence_length=512, sampler="pipeline",
                               default_steps=50),
    # FLUX.1: flow matching, FlowMatchEulerDiscreteScheduler with the resolution-dependent shift (kept: sampler "pipeline")
    "flux1-dev": BackboneSpec("flux1-dev", "black-forest-labs/FLUX.1-dev", "FluxPipeline", "FluxTransformer2DModel",
                              {**_FLUX_1, "guidance_embeds": True}, 1024, max_sequence_length=512, sampler="pipeline",
                              default_steps=28, gated=True),
    "flux1-schnell": BackboneSpec("flux1-schnell", "black-forest-labs/FLUX.1-schnell", "FluxPipeline",
                                  "FluxTransformer2DModel", {**_FLUX_1, "guidance_embeds": False}, 1024,
                                  max_sequence_length=256, sampler="pipeline", default_steps=4),
}


# registered image backbones whose training data path (text encoder, VAE latents, objective) is not written yet
# (none now: every registered image class trains)
UNTRAINED_CLASSES: tuple[str, ...] = ()


def training_refusal(name: str) -> str | None:
    """Why `ilf precompute` / `ilf train` cannot take registered backbone `name` yet (None: they can, or `name`
    is not a registered backbone): a video backbone, or an image class in `UNTRAINED_CLASSES`. The image backbones
    PixArt, DiT, FLUX.1, SD3.5, Qwen-Image and Sana train (`ilf.train`). Read by the training commands and by the
    workflow config check, without torch.

    Args:
        name: a backbone name, e.g. `"sana-1600m-1024"`.

    Returns:
        None, or what is missing, e.g. `"training and precomputing do not take SanaTransformer2DModel yet"`.
    """
    spec = BACKBONES.get(name)
    if spec is None:
        return None
    if spec.task == "t2v":  # video-caption pairs train text-to-video Wan (ilf.train.video)
        if spec.pipeline_class != "WanPipeline" or spec.transformer_class != "WanTransformer3DModel":
            return (f"training on video-caption pairs takes text-to-video WanPipeline backbones only, not "
                    f"{spec.pipeline_class}")
        if spec.transformer_config.get("image_dim") is not None:
            return "training on image-conditioned clips (Wan image-to-video, image_dim set) is not supported"
        return None
    if spec.transformer_class in UNTRAINED_CLASSES:
        return f"training and precomputing do not take {spec.transformer_class} yet"
    return None


def trainable_backbones() -> list[str]:
    """The registered backbones `ilf train` takes (`training_refusal` is None)."""
    return [n for n in BACKBONES if training_refusal(n) is None]


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
                            f"ilf prefetch --backbone <name>  (or: {hf_download_command(repo_id, dirs[0])})")


PREFETCH_IGNORE = ("*.msgpack", "*.h5", "*.onnx", "*.ot", "*.pth", "*.pt", "*.ckpt")  # non-diffusers weight formats


def hf_download_command(repo_id: str, cache_dir: Path | None = None) -> str:
    """The `hf download` line that stores a hub repo where `local_snapshot` looks, as `prefetch_backbone` does.

    Args:
        repo_id: the hub repo, e.g. `"Qwen/Qwen-Image"`.
        cache_dir: the hub cache (None: the ILF cache's, `ILF_CACHE/hf`).

    Returns:
        e.g. `hf download Qwen/Qwen-Image --cache-dir ~/.cache/ilf/hf --exclude '*.msgpack' ...` (the weight
        formats diffusers does not load are left out).
    """
    excludes = " ".join(f"--exclude '{p}'" for p in PREFETCH_IGNORE)
    return f"hf download {repo_id} --cache-dir {cache_dir or hf_cache_dir()} {excludes}"


def gated_note(spec: BackboneSpec) -> str:
    """What a gated repo needs before `ilf prefetch` / `hf download` can fetch it ('' for an open one)."""
    if not spec.gated:
        return ""
    return (f"{spec.repo_id} is gated: accept its license at https://huggingface.co/{spec.repo_id} and log in "
            "with `hf auth login` (or set HF_TOKEN) first")


def load_pipeline(name: str, torch_dtype: Any = None, device: Any = None, dpm_solver: bool = True):
    """The stock diffusers pipeline of a registered backbone (paper Sec. 4.1), from the local cache only.

    Never downloads: weights come from the ILF cache that `ilf prefetch --backbone NAME` fills (or the default
    Hugging Face cache).

    Args:
        name: a `BACKBONES` key, e.g. `"pixart-alpha-512"` or `"dit-xl-2-256"`.
        torch_dtype: the dtype to load the weights in (`from_pretrained`'s), e.g. `torch.float16`.
        device: where to move the pipeline (None: stays on the CPU).
        dpm_solver: replace the scheduler by DPM-Solver++ on the backbone's schedule, the paper's sampler
            (backbones whose `sampler` is `"pipeline"`, flow matching: FLUX.1, SD3.5, Sana, Qwen-Image, Wan, keep their own).

    Returns:
        The stock pipeline (`PixArtAlphaPipeline`, `PixArtSigmaPipeline`, `DiTPipeline`,
        `StableDiffusion3Pipeline`, `WanPipeline`, ...: the backbone's `pipeline_class`).

    Raises:
        ILFConfigError: `name` is not a registered backbone.
        MissingAssetError: the weights are not in the local cache (one paragraph: repo id, cache directories,
            `ilf prefetch --backbone NAME`, the `hf download` line, and for a gated repo what it needs).

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
        detail = f"or: {hf_download_command(spec.repo_id)}" + (f"; {gated_note(spec)}" if spec.gated else "")
        raise MissingAssetError(f"weights of backbone {name!r} (hub repo {spec.repo_id!r})",
                                err.location, f"ilf prefetch --backbone {name}", detail) from None
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(str(path), torch_dtype=torch_dtype,
                                                                   local_files_only=True)
    if dpm_solver and spec.sampler == "dpm-solver++":
        pipe.scheduler = dpm_solver_pp(pipe.scheduler.config)
    return pipe.to(device) if device is not None else pipe


PREFETCH_IGNORE = ("*.msgpack", "*.h5", "*.onnx", "*.ot", "*.pth", "*.pt", "*.ckpt")  # non-diffusers weight formats


def prefetch_backbone(name: str, cache_dir: Path | None = None) -> Path:
    """Download a backbone's diffusers folders into the ILF hub cache (run on a machine with internet)."""
    from huggingface_hub import snapshot_download

    from huggingface_hub.errors import GatedRepoError

    spec = get_backbone(name)
    try:
        return Path(snapshot_download(spec.repo_id, cache_dir=str(cache_dir or hf_cache_dir()),
                                      ignore_patterns=list(PREFETCH_IGNORE)))
    except GatedRepoError:
        raise ILFConfigError("backbone", name, f"a backbone this account may download: {gated_note(spec)}") from None
