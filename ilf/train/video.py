"""Training ILF on video-caption pairs: Wan 2.1 text-to-video (`WanTransformer3DModel` in a `WanPipeline`).

The same Fast Approximate Distillation on the flow-matching path as FLUX.1 / SD3.5 (`ilf.train.flow`, METHOD.md
"Training"), on 5-D video latents; only the data, the encoders and the model call are Wan's:

  source    `data.source: videos` (`ilf.train.video_data`): a folder with `captions.jsonl`, one record per clip,
            {"video": "relative/path.mp4" or a folder of frame images, "caption": "..."}; `num_frames` (4k + 1)
            frames from the first, every `frame_stride`-th (a video file decoded with PyAV), resized on the short
            side and centre-cropped to (height, width) = (`data.resolution`, `data.width`) by WanPipeline's
            `video_processor` (`preprocess_video(..., resize_mode="crop")`): pixels (C, F, H, W) in [-1, 1]
  latents   the Wan VAE's (`AutoencoderKLWan`) posterior mean, normalised (z - latents_mean) / latents_std per
            channel: exactly the inverse of `WanPipeline.__call__`'s decode (`latents / (1 / std) + mean`);
            (C, F', H', W') per clip, F' = (F - 1) / 4 + 1, H' = H / 8, W' = W / 8
  captions  `WanPipeline.encode_prompt` (umT5, `max_sequence_length` 512): the pipeline zero-pads each caption's
            tokens to the full length; the shards keep the non-zero rows (a right-padded mask) and the objective
            pads with zeros again, so the model reads exactly the pipeline's (B, 512, D) sequence
  null      the empty prompt's embedding: the `negative_prompt=""` that WanPipeline's guidance uses by default
  model     `transformer(hidden_states=x_s, timestep=1000 s, encoder_hidden_states=...)`, as WanPipeline calls it
            (its scheduler's timestep: UniPC with flow sigmas or flow-matching Euler, both sigma * 1000); latents
            and text in the transformer's dtype, as the pipeline casts them
  sigmas    the training noise levels: a `FlowMatchEulerDiscreteScheduler` with the pipeline's `flow_shift`
            (`shift` for an Euler pipeline), the shifted table Wan's samplers step on

Refused: image-to-video Wan (`image_dim` set, `WanImageToVideoPipeline`) and Wan 2.2's two-expert pipelines
(`transformer_2`) or per-token timesteps (`expand_timesteps`).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import ILFConfigError
from ..io import atomic_path
from .config import TrainConfig
from .data import FORMAT, NULL_NAME, shard_name
from .flow import FlowObjective, flow_matching_config
from .precompute import _dtype, _trim, open_folder, pending_shards
from .video_data import VideoSourceDataset

VIDEO_MODELS = (WanTransformer3DModel,)


def is_video_model(transformer: nn.Module) -> bool:
    """A text-to-video transformer this module trains (Wan 2.1 T2V)."""
    return isinstance(transformer, VIDEO_MODELS)


def check_video_transformer(transformer: nn.Module) -> None:
    """Raise `ILFConfigError` for a video transformer training cannot take: Wan's image-to-video variant (its
    `image_dim` adds CLIP image tokens that video-caption pairs do not give)."""
    cfg = transformer.config
    if cfg.get("image_dim") is not None:
        raise ILFConfigError("backbone", f"{type(transformer).__name__}(image_dim={cfg.image_dim})",
                             "a text-to-video Wan transformer (image_dim None): training on image-conditioned "
                             "clips (WanImageToVideoPipeline) is not supported")


def check_video_pipeline(pipe: Any) -> None:
    """`check_video_transformer`, and raise `ILFConfigError` for a Wan 2.2 pipeline: two experts (`transformer_2`
    takes the low-noise steps, so one transformer's feedback would train on half its range) or per-token timesteps
    (`expand_timesteps`)."""
    check_video_transformer(pipe.transformer)
    if getattr(pipe, "transformer_2", None) is not None:
        raise ILFConfigError("backbone", f"{type(pipe).__name__} with transformer_2",
                             "a one-transformer Wan pipeline (Wan 2.1): Wan 2.2's two-expert pipelines are not trained")
    if pipe.config.get("expand_timesteps"):
        raise ILFConfigError("backbone", f"{type(pipe).__name__}(expand_timesteps=True)",
                             "a Wan pipeline with one timestep per clip (Wan 2.2 TI2V's per-token timesteps are not "
                             "trained)")


# ---------------------------------------------------------------- encoders (precompute)

def _latent_stats(vae: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents_mean, 1 / latents_std) of the Wan VAE as (1, C, 1, 1, 1), as `WanPipeline.__call__` builds them."""
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


@torch.no_grad()
def encode_video_latents(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised Wan VAE latents of clips (the posterior mean; `WanImageToVideoPipeline.prepare_latents`' form).

    Args:
        pipe: a `WanPipeline` (its `vae`, an `AutoencoderKLWan`).
        pixels: (B, 3, F, H, W) in [-1, 1].

    Returns:
        (B, C, F', H', W') float32, (z - latents_mean) * (1 / latents_std).
    """
    vae = pipe.vae
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    mean, inv_std = _latent_stats(vae, z)
    return ((z - mean) * inv_std).float()


def denormalise_video_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """What `WanPipeline.__call__` decodes: latents / (1 / latents_std) + latents_mean, in the VAE's dtype."""
    latents = latents.to(vae.device, vae.dtype)
    mean, inv_std = _latent_stats(vae, latents)
    return latents / inv_std + mean


@torch.no_grad()
def encode_video_captions(pipe: Any, captions: list[str], max_sequence_length: int,
                          device: torch.device) -> dict[str, torch.Tensor]:
    """`WanPipeline.encode_prompt` of `captions` (umT5), with the mask of the rows it did not zero-pad.

    Returns:
        `prompt_embeds` (B, L, D) float32 (L = max_sequence_length; rows past a caption's tokens are zeros, as the
        pipeline pads them) and `prompt_attention_mask` (B, L): 1 up to the caption's last non-zero row.
    """
    emb, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
                                device=device)
    emb = emb.float().cpu()
    nonzero = emb.abs().amax(-1) > 0  # (B, L)
    positions = torch.arange(1, emb.shape[1] + 1)
    length = (nonzero * positions).amax(1)  # the last non-zero row + 1 (0 for none)
    mask = (positions[None] <= length[:, None]).long()
    return {"prompt_embeds": emb, "prompt_attention_mask": mask}


def video_geometry(config: TrainConfig, pipe: Any) -> tuple[int, int, int]:
    """(height, width, num_frames) of the training clips: `data.resolution` / `width` / `num_frames`, else the
    registry's for a registered backbone, else `WanPipeline.__call__`'s defaults (480 x 832, 81 frames); checked
    against the pipeline's constraints (sides multiples of the VAE's spatial factor x the patch size, 4k + 1
    frames)."""
    from ..registry import BACKBONES

    spec = BACKBONES.get(config.backbone)
    call = inspect.signature(type(pipe).__call__).parameters
    defaults = ((spec.resolution, spec.width or spec.resolution, spec.num_frames) if spec is not None
                else (call["height"].default, call["width"].default, call["num_frames"].default))
    d = config.data
    height, width, frames = (d.resolution or defaults[0], d.width or defaults[1], d.num_frames or defaults[2])
    side = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    for field, v in (("data.resolution", height), ("data.width", width)):
        if v % side:
            raise ILFConfigError(field, v, f"a multiple of {side} (the VAE's {pipe.vae_scale_factor_spatial}x "
                                           f"downsampling x the patch size {pipe.transformer.config.patch_size[1]})")
    temporal = pipe.vae_scale_factor_temporal
    if frames % temporal != 1:
        raise ILFConfigError("data.num_frames", frames,
                             f"{temporal}k + 1 frames (the VAE's temporal factor {temporal})")
    return height, width, frames


def video_null_condition(pipe: Any, max_sequence_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The condition condition dropout substitutes: the empty prompt's embedding (WanPipeline's default
    `negative_prompt=""` for guidance), trimmed to its non-zero rows."""
    enc = encode_video_captions(pipe, [""], max_sequence_length, device)
    emb, mask = _trim(enc["prompt_embeds"], enc["prompt_attention_mask"])
    return {"prompt_embeds": emb, "prompt_attention_mask": mask}


# ---------------------------------------------------------------- precompute

_RESUME_KEYS = ("task", "backbone", "latent_shape", "num_samples", "shard_size", "storage_dtype", "source",
                "resolution", "width", "num_frames", "max_sequence_length")


def precompute_video(config: TrainConfig, out: Path, pipe: Any, info: Any, device: torch.device,
                     progress: bool = True) -> dict[str, Any]:
    """`ilf.train.precompute` for a video backbone: clips to normalised Wan VAE latents, captions to umT5
    embeddings, the empty prompt as the null condition (module doc); same folder layout, resumable shards.

    Args:
        config: the training config (`data.source` must be `videos`).
        out: the latent folder.
        pipe: the `WanPipeline`, already on `device`.
        info: the distributed layout (`ilf.train.distributed.init`).
        device: where the VAE and the text encoder run.
        progress: show a progress bar on rank 0.

    Returns:
        The folder's meta.json content.
    """
    from . import distributed as dist
    from .backbone import default_max_sequence_length, latent_channels

    transformer = pipe.transformer
    check_video_pipeline(pipe)
    if config.data.source != "videos":
        raise ILFConfigError("data.source", config.data.source, f"videos for the video backbone {config.backbone!r}")
    height, width, frames = video_geometry(config, pipe)
    source = VideoSourceDataset(config.data, height, width, frames)
    max_len = config.data.max_sequence_length or default_max_sequence_length(config.backbone, pipe)
    s, t = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    latent_shape = [latent_channels(transformer), (frames - 1) // t + 1, height // s, width // s]
    src_spec = {k: getattr(config.data, k) for k in ("source", "path", "num_samples", "seed", "frame_stride")}
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "task": "t2v", "backbone": config.backbone, "latent_shape": latent_shape,
        "num_samples": len(source), "shard_size": config.data.shard_size, "storage_dtype": config.data.storage_dtype,
        "source": src_spec, "resolution": height, "width": width, "num_frames": frames, "max_sequence_length": max_len,
        "caption_dim": int(transformer.config.text_dim), "pooled_dim": None, "num_classes": None, "classes": None,
        "null_label": None,
    }
    open_folder(out, meta, config, info, device, _RESUME_KEYS)
    store = _dtype(config.data.storage_dtype)
    if info.rank == 0 and not (out / NULL_NAME).is_file():
        null = video_null_condition(pipe, max_len, device)
        with atomic_path(out / NULL_NAME) as tmp:
            save_file({"prompt_embeds": null["prompt_embeds"].to(store),
                       "prompt_attention_mask": null["prompt_attention_mask"].to(torch.int8)}, str(tmp))
    n, size = len(source), config.data.shard_size
    todo = pending_shards(out, n, size, latent_shape, info)
    bar = tqdm(total=sum(min(size, n - k * size) for k in todo), unit="clip", desc="precompute",
               disable=not (progress and info.rank == 0))
    for k in todo:
        idx = list(range(k * size, min((k + 1) * size, n)))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(source, idx), batch_size=config.data.batch_size,
                                             num_workers=config.data.num_workers, shuffle=False)
        lat, embs, masks = [], [], []
        for batch in loader:
            lat.append(encode_video_latents(pipe, batch["pixels"]).cpu())
            enc = encode_video_captions(pipe, list(batch["caption"]), max_len, device)
            embs.append(enc["prompt_embeds"])
            masks.append(enc["prompt_attention_mask"])
            bar.update(len(batch["pixels"]))
        emb, mask = _trim(torch.cat(embs), torch.cat(masks))
        tensors = {"latents": torch.cat(lat).to(store).contiguous(), "prompt_embeds": emb.to(store),
                   "prompt_attention_mask": mask.to(torch.int8)}
        with atomic_path(out / shard_name(k)) as tmp:
            save_file(tensors, str(tmp), metadata={"start": str(idx[0]), "count": str(len(idx))})
    bar.close()
    dist.barrier(info)
    return meta


def check_video_fits(meta: dict[str, Any], transformer: nn.Module, task: str, latents_dir: str | Path) -> None:
    """Raise `ILFConfigError` if a latent folder cannot feed this video backbone (checked before any step)."""
    problems = []
    shape = meta["latent_shape"]
    if meta["task"] != task:
        problems.append(f"task {meta['task']!r} but the backbone is {task!r}")
    if len(shape) != 4:
        problems.append(f"latents of shape {shape}, not video latents (C, F, H, W)")
    else:
        c, _, h, w = shape
        cfg = transformer.config
        if c != cfg.in_channels:
            problems.append(f"{c} latent channels but the backbone takes {cfg.in_channels} (in_channels)")
        _, p_h, p_w = cfg.patch_size
        if h % p_h or w % p_w:
            problems.append(f"latents of {h}x{w}, but the patch size {p_h}x{p_w} does not divide them")
    text_dim = transformer.config.get("text_dim")
    if text_dim is not None and meta.get("caption_dim") != text_dim:
        problems.append(f"caption embeddings of dim {meta.get('caption_dim')} but the backbone reads "
                        f"{text_dim} (text_dim)")
    if problems:
        raise ILFConfigError("data.latents_dir", str(latents_dir),
                             "latents made for this backbone (" + "; ".join(problems) + "); re-run ilf precompute "
                             "with this training config")


# ---------------------------------------------------------------- the objective

def pad_prompt_embeds(emb: torch.Tensor, mask: torch.Tensor, length: int | None) -> torch.Tensor:
    """The (B, L, D) sequence WanPipeline passes: rows past each caption's mask zeroed, zero rows appended up to
    `length` (the `max_sequence_length` the captions were encoded with; None keeps L)."""
    emb = torch.where(mask[..., None].bool(), emb, torch.zeros((), dtype=emb.dtype, device=emb.device))
    if length is not None and emb.shape[1] < length:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], length - emb.shape[1], emb.shape[2])], dim=1)
    return emb


def wan_velocity(transformer: nn.Module, x: torch.Tensor, timestep: torch.Tensor,
                 kwargs: dict[str, Any]) -> torch.Tensor:
    """v(x, t) in float32, (B, C, F, H, W): the call `WanPipeline.__call__` makes (`hidden_states=latents.to(
    transformer_dtype)`, `timestep=t.expand(B)`, `encoder_hidden_states=prompt_embeds.to(transformer_dtype)`)."""
    dtype = transformer.dtype
    out = transformer(hidden_states=x.to(dtype), timestep=timestep,
                      encoder_hidden_states=kwargs["encoder_hidden_states"].to(dtype), return_dict=False)[0]
    return out.float()


class WanFlowObjective(FlowObjective):
    """`FlowObjective` (velocity target, teacher at s/2, Euler `standard`) with Wan's call on video latents.

    Args:
        mode: fast | standard | none.
        transformer: the `WanTransformer3DModel` with ILF attached.
        scheduler_config: its pipeline's scheduler config (UniPC with flow sigmas or flow-matching Euler).
        teacher_steps: K Euler steps for `standard`.
        autocast: () -> autocast context, or None.
        timestep_sampling, logit_mean, logit_std: as `FlowObjective`.
        max_sequence_length: the caption length the pipeline pads to (the latent folder's).
    """

    def __init__(self, mode: str, transformer: nn.Module, scheduler_config: dict[str, Any], teacher_steps: int = 8,
                 autocast: Callable[[], Any] | None = None, timestep_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0, max_sequence_length: int | None = None):
        check_video_transformer(transformer)
        super().__init__(mode, transformer, flow_matching_config(scheduler_config), None, teacher_steps, autocast,
                         timestep_sampling, logit_mean, logit_std)
        self.max_sequence_length = max_sequence_length

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"encoder_hidden_states": pad_prompt_embeds(batch["prompt_embeds"], batch["prompt_attention_mask"],
                                                           self.max_sequence_length)}

    def velocity(self, x: torch.Tensor, s: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v(x, s) for noise levels s (B,) float64: the model gets 1000 s, its scheduler's timestep."""
        model_t = (s * self.time_scale).to(device=x.device, dtype=torch.float32)
        return wan_velocity(self.transformer, x, model_t, kwargs)
