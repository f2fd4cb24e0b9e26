"""Encode the training pairs once: VAE latents and caption embeddings (T5) into sharded safetensors.

Training then never runs the VAE or the text encoder (what makes ~100 GPU hours at 1024 px feasible,
paper Sec. 5). Each shard is written atomically (temporary file, then rename), and a re-run skips the
shards already on disk, so a killed precompute resumes where it stopped. Under torchrun, rank r encodes
shards r, r + W, r + 2W, ...

Layout of `<latents_dir>`: `meta.json` (task, latent shape, sample count, source), `shard_XXXXX.safetensors`
(`latents` (n, C, H, W); t2i: `prompt_embeds` (n, L, D) + `prompt_attention_mask` (n, L), L trimmed to the
shard's longest caption, which is exact because padded tokens are masked out of cross-attention;
FLUX/SD3 also `pooled_prompt_embeds` (n, P), and their mask is all ones with L untrimmed (their pipelines
attend to every padded T5 token); c2i: `class_labels` (n,)), and for t2i `null_condition.safetensors` (the
null condition: the empty caption's embedding for PixArt, zero prompt and pooled embeddings for FLUX/SD3, the
empty caption's sequence and pooled embeddings for toy-flux, whose pipeline takes the toy caption encoder's
embeddings, `ilf.toy.flux.toy_flux_embeddings`).
Latents are the VAE posterior mean, shifted and scaled: (z - shift_factor) * scaling_factor.
Video backbones (text-to-video Wan) write the same layout with video latents (n, C, F, H, W): `ilf.train.video`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ILFConfigError
from ..io import atomic_path, write_json_atomic
from ..harness.provenance import provenance
from . import distributed as dist
from .backbone import (FLOW_MODELS, caption_dim, default_max_sequence_length, latent_channels, latent_side,
                       load_backbone, null_class_label, pooled_dim, task_of, vae_scale_factor)
from .config import TrainConfig
from .data import FORMAT, META_NAME, NULL_NAME, SourceDataset, read_meta, shard_name

# meta.json fields that must agree for a re-run to resume an existing folder.
_RESUME_KEYS = ("task", "backbone", "latent_shape", "num_samples", "shard_size", "storage_dtype", "source",
                "resolution", "max_sequence_length")


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _shard_ok(path: Path, count: int, shape: list[int]) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.get_slice("latents").get_shape()) == [count, *shape]
    except Exception:  # a damaged file is re-encoded
        return False


@torch.no_grad()
def encode_latents(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean, shifted and scaled as the backbone expects: (z - shift) * scaling_factor."""
    vae = pipe.vae
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).float()


@torch.no_grad()
def encode_captions(pipe: Any, captions: list[str], max_sequence_length: int, clean_caption: bool,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """The pipeline's own `encode_prompt` of `captions` (T5 for PixArt; CLIP + T5 for FLUX and SD3).

    Returns:
        `prompt_embeds` (B, L, D) and `prompt_attention_mask` (B, L); FLUX/SD3 also `pooled_prompt_embeds` (B, P),
        with an all-ones mask (their pipelines pass no caption mask).
    """
    if is_toy_flux(pipe):  # no text encoder in the pipeline: the toy caption encoder, as toy-flux sampling uses it
        from ..toy.flux import toy_flux_embeddings

        emb, pooled = toy_flux_embeddings(captions)
        return {"prompt_embeds": emb, "prompt_attention_mask": torch.ones(emb.shape[:2], dtype=torch.long),
                "pooled_prompt_embeds": pooled}
    if isinstance(pipe.transformer, FLOW_MODELS):
        if isinstance(pipe.transformer, FluxTransformer2DModel):  # (prompt_embeds, pooled, text_ids)
            emb, pooled, _ = pipe.encode_prompt(captions, None, device=device, max_sequence_length=max_sequence_length)
        else:  # StableDiffusion3Pipeline: (prompt_embeds, negative, pooled, negative pooled)
            emb, _, pooled, _ = pipe.encode_prompt(captions, None, None, device=device, do_classifier_free_guidance=False,
                                                   max_sequence_length=max_sequence_length)
        return {"prompt_embeds": emb.float().cpu(), "prompt_attention_mask": torch.ones(emb.shape[:2], dtype=torch.long),
                "pooled_prompt_embeds": pooled.float().cpu()}
    emb, mask, _, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, device=device,
                                         clean_caption=clean_caption, max_sequence_length=max_sequence_length)
    return {"prompt_embeds": emb.float().cpu(), "prompt_attention_mask": mask.long().cpu()}


def is_toy_flux(pipe: Any) -> bool:
    """The toy FLUX pipeline (`ilf.toy.flux.load_toy_flux_pipeline`): conditioned by the toy caption encoder."""
    from ..toy.flux import ToyPixelShuffleVAE

    return isinstance(getattr(pipe, "vae", None), ToyPixelShuffleVAE)


def null_condition(pipe: Any, max_sequence_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The condition that condition dropout substitutes: PixArt's empty-caption T5 embedding (what its pipelines
    use for guidance); zeros of the empty caption's shapes for FLUX/SD3 (the SD3 paper drops text encoders to zero);
    for toy-flux the empty caption's sequence and pooled embeddings (its pre-training dropout and its true-CFG
    negative)."""
    enc = encode_captions(pipe, [""], max_sequence_length, False, device)
    emb, mask = _trim(enc["prompt_embeds"], enc["prompt_attention_mask"])
    out = {"prompt_embeds": emb, "prompt_attention_mask": mask}
    if is_toy_flux(pipe):
        return {**out, "pooled_prompt_embeds": enc["pooled_prompt_embeds"]}
    if "pooled_prompt_embeds" in enc:
        out = {"prompt_embeds": torch.zeros_like(emb), "prompt_attention_mask": mask,
               "pooled_prompt_embeds": torch.zeros_like(enc["pooled_prompt_embeds"])}
    return out


def _trim(emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(int(mask.sum(1).max()), 1)
    if int(mask[:, length:].sum()) != 0:
        raise ValueError("caption attention masks are not right-padded; cannot trim them")
    return emb[:, :length].contiguous(), mask[:, :length].contiguous()


def precompute(config: TrainConfig, out_dir: str | Path, pipeline: Any = None, progress: bool = True) -> dict[str, Any]:
    """Encode `config.data` for `config.backbone` into `out_dir`; returns the folder's meta.json content."""
    out = Path(out_dir)
    info = dist.init()
    device = dist.device_for(config.device, info)
    pipe = pipeline if pipeline is not None else load_backbone(config.backbone)
    pipe.to(device)
    transformer = pipe.transformer
    task = task_of(transformer)
    if task == "t2v":  # video-caption pairs (Wan): ilf.train.video
        from .video import precompute_video

        return precompute_video(config, out, pipe, info, device, progress)
    scale = vae_scale_factor(pipe)
    resolution = config.data.resolution or latent_side(transformer, pipe) * scale
    if resolution % scale:
        raise ILFConfigError("data.resolution", resolution, f"a multiple of the VAE's downsampling factor {scale}")
    if config.data.source == "videos":
        raise ILFConfigError("data.source", "videos", f"an image source for the image backbone {config.backbone!r}")
    source = SourceDataset(config.data, resolution)
    if source.task != task:
        raise ILFConfigError("data.source", config.data.source, f"a {task} source for backbone {config.backbone!r}")
    max_len = config.data.max_sequence_length or default_max_sequence_length(config.backbone, pipe)
    latent_shape = [latent_channels(transformer), resolution // scale, resolution // scale]
    src_spec = {k: getattr(config.data, k) for k in ("source", "path", "num_samples", "seed")}
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "task": task, "backbone": config.backbone, "latent_shape": latent_shape,
        "num_samples": len(source), "shard_size": config.data.shard_size, "storage_dtype": config.data.storage_dtype,
        "source": src_spec, "resolution": resolution, "max_sequence_length": max_len if task == "t2i" else None,
        "caption_dim": caption_dim(transformer) if task == "t2i" else None, "pooled_dim": pooled_dim(transformer),
        "num_classes": (len(source.classes) if source.classes else 10) if task == "c2i" else None,
        "classes": source.classes, "null_label": null_class_label(transformer) if task == "c2i" else None,
    }
    if (out / META_NAME).is_file():
        old = read_meta(out)
        diffs = [k for k in _RESUME_KEYS if old.get(k) != meta[k]]
        if diffs:
            raise ILFConfigError("--out", str(out), f"an empty folder or one precomputed with the same settings "
                                 f"(it differs in {', '.join(diffs)}: e.g. {diffs[0]}={old.get(diffs[0])!r} there, "
                                 f"{meta[diffs[0]]!r} now)")
    elif info.rank == 0:
        write_json_atomic(out / META_NAME, {**meta, "provenance": provenance(config.to_dict(), device)})
    store = _dtype(config.data.storage_dtype)
    if task == "t2i" and info.rank == 0 and not (out / NULL_NAME).is_file():
        null = null_condition(pipe, max_len, device)
        null["prompt_attention_mask"] = null["prompt_attention_mask"].to(torch.int8)
        with atomic_path(out / NULL_NAME) as tmp:
            save_file({k: v if k == "prompt_attention_mask" else v.to(store) for k, v in null.items()}, str(tmp))
    n, size = len(source), config.data.shard_size
    shards = [k for k in range(-(-n // size)) if k % info.world_size == info.rank]
    todo = [k for k in shards if not _shard_ok(out / shard_name(k), min(size, n - k * size), latent_shape)]
    bar = tqdm(total=sum(min(size, n - k * size) for k in todo), unit="img", desc="precompute",
               disable=not (progress and info.rank == 0))
    for k in todo:
        idx = list(range(k * size, min((k + 1) * size, n)))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(source, idx), batch_size=config.data.batch_size,
                                             num_workers=config.data.num_workers, shuffle=False)
        lat, embs, masks, pooled, labels = [], [], [], [], []
        for batch in loader:
            lat.append(encode_latents(pipe, batch["pixels"]).cpu())
            if task == "t2i":
                enc = encode_captions(pipe, list(batch["caption"]), max_len, config.data.clean_caption, device)
                embs.append(enc["prompt_embeds"])
                masks.append(enc["prompt_attention_mask"])
                if "pooled_prompt_embeds" in enc:
                    pooled.append(enc["pooled_prompt_embeds"])
            else:
                labels.append(batch["class_label"].long())
            bar.update(len(batch["pixels"]))
        tensors = {"latents": torch.cat(lat).to(store).contiguous()}
        if task == "t2i":
            emb, mask = _trim(torch.cat(embs), torch.cat(masks))
            tensors.update(prompt_embeds=emb.to(store), prompt_attention_mask=mask.to(torch.int8))
            if pooled:
                tensors["pooled_prompt_embeds"] = torch.cat(pooled).to(store).contiguous()
        else:
            tensors["class_labels"] = torch.cat(labels)
        with atomic_path(out / shard_name(k)) as tmp:
            save_file(tensors, str(tmp), metadata={"start": str(idx[0]), "count": str(len(idx))})
    bar.close()
    dist.barrier(info)
    return meta
