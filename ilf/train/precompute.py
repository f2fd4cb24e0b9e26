"""Encode the training pairs once: VAE latents and caption embeddings into sharded safetensors.

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
embeddings, `ilf.toy.flux.toy_flux_embeddings`; Qwen-Image's negative prompt " ", Sana's negative "").
Latents are the VAE posterior mean, shifted and scaled: (z - shift_factor) * scaling_factor; Qwen-Image's
normalised per channel by its VAE's latents_mean / latents_std, Sana's DC-AE latent times scaling_factor
(`encode_latents`).
Video backbones (text-to-video Wan) write the same layout with video latents (n, C, F, H, W): `ilf.train.video`.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from diffusers import (AutoencoderDC, AutoencoderKLQwenImage, FluxTransformer2DModel, QwenImageTransformer2DModel,
                       SanaPipeline, SanaTransformer2DModel)
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ILFConfigError
from ..io import atomic_path, write_json_atomic
from ..harness.provenance import provenance
from . import distributed as dist
from .backbone import (POOLED_MODELS, caption_dim, default_max_sequence_length, latent_channels, latent_side,
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


def encoders_to(pipe: Any, device: torch.device) -> None:
    """Move what precompute runs (VAE, text encoders) to `device`; the transformer stays where it is (only its
    config is read here; a 20B float32 Qwen-Image transformer would not fit beside them)."""
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and not name.startswith("transformer"):
            module.to(device)


@torch.no_grad()
def encode_latents(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, H, W) of pixels (B, 3, H', W') in [-1, 1], normalised as the backbone's pipeline expects them.

    `AutoencoderKL`: posterior mean, (z - shift_factor) * scaling_factor. Qwen-Image (`qwen_image_latents`) and
    Sana's DC-AE (`dc_ae_latents`) as their pipelines normalise them.
    """
    vae = pipe.vae
    if isinstance(vae, AutoencoderKLQwenImage):
        return qwen_image_latents(vae, pixels)
    if isinstance(vae, AutoencoderDC):
        return dc_ae_latents(vae, pixels)
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).float()


def qwen_image_latents(vae: AutoencoderKLQwenImage, pixels: torch.Tensor) -> torch.Tensor:
    """Qwen-Image: the posterior mean of the one-frame video (B, 3, 1, H', W'), normalised per channel as
    `QwenImageImg2ImgPipeline._encode_vae_image` does, (z - latents_mean) * (1 / latents_std) (the inverse of
    QwenImagePipeline's `latents / (1 / latents_std) + latents_mean` before decoding); (B, C, 1, H, W) -> (B, C, H, W)."""
    z = vae.encode(pixels.to(vae.device, vae.dtype)[:, :, None]).latent_dist.mode()
    c = vae.config
    mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1).to(z.device, z.dtype)
    inv_std = 1.0 / torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1).to(z.device, z.dtype)
    return ((z - mean) * inv_std)[:, :, 0].float()


def dc_ae_latents(vae: AutoencoderDC, pixels: torch.Tensor) -> torch.Tensor:
    """Sana: the DC-AE's `latent` times `scaling_factor` (SanaPipeline divides by it before decoding; as
    SanaControlNetPipeline encodes its control image)."""
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent
    return (z * vae.config.scaling_factor).float()


def sana_complex_human_instruction() -> list[str]:
    """SanaPipeline's default `complex_human_instruction` (the prefix its `__call__` gives every prompt)."""
    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


@torch.no_grad()
def encode_captions(pipe: Any, captions: list[str], max_sequence_length: int, clean_caption: bool,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """The pipeline's own `encode_prompt` of `captions` (T5 for PixArt; CLIP + T5 for FLUX and SD3; Qwen2.5-VL for
    Qwen-Image; Gemma-2 with SanaPipeline's default complex human instruction for Sana).

    Returns:
        `prompt_embeds` (B, L, D) and `prompt_attention_mask` (B, L); FLUX/SD3 also `pooled_prompt_embeds` (B, P),
        with an all-ones mask (their pipelines pass no caption mask); Qwen-Image's mask all ones where its
        `encode_prompt` returns None (every token valid).
    """
    if is_toy_flux(pipe):  # no text encoder in the pipeline: the toy caption encoder, as toy-flux sampling uses it
        from ..toy.flux import toy_flux_embeddings

        emb, pooled = toy_flux_embeddings(captions)
        return {"prompt_embeds": emb, "prompt_attention_mask": torch.ones(emb.shape[:2], dtype=torch.long),
                "pooled_prompt_embeds": pooled}
    if isinstance(pipe.transformer, QwenImageTransformer2DModel):
        emb, mask = pipe.encode_prompt(captions, device=device, max_sequence_length=max_sequence_length)
        mask = torch.ones(emb.shape[:2], dtype=torch.long) if mask is None else mask
        return {"prompt_embeds": emb.float().cpu(), "prompt_attention_mask": mask.long().cpu()}
    if isinstance(pipe.transformer, SanaTransformer2DModel):
        emb, mask, _, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, device=device,
                                             clean_caption=clean_caption, max_sequence_length=max_sequence_length,
                                             complex_human_instruction=sana_complex_human_instruction())
        return {"prompt_embeds": emb.float().cpu(), "prompt_attention_mask": mask.long().cpu()}
    if isinstance(pipe.transformer, POOLED_MODELS):
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


QWEN_IMAGE_NEGATIVE_PROMPT = " "  # Qwen-Image's model card: true CFG with negative_prompt=" "


@torch.no_grad()
def sana_negative_condition(pipe: Any, max_sequence_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """SanaPipeline's unconditional branch: its `encode_prompt`'s negative embedding of the default
    `negative_prompt` "" (encoded without the complex human instruction, padded to `max_sequence_length`)."""
    _, _, emb, mask = pipe.encode_prompt([""], do_classifier_free_guidance=True, negative_prompt="", device=device,
                                         max_sequence_length=max_sequence_length,
                                         complex_human_instruction=sana_complex_human_instruction())
    return {"prompt_embeds": emb.float().cpu(), "prompt_attention_mask": mask.long().cpu()}


def null_condition(pipe: Any, max_sequence_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The condition that condition dropout substitutes: PixArt's empty-caption T5 embedding (what its pipelines
    use for guidance); zeros of the empty caption's shapes for FLUX/SD3 (the SD3 paper drops text encoders to zero);
    for toy-flux the empty caption's sequence and pooled embeddings (its pre-training dropout and its true-CFG
    negative); Qwen-Image's negative prompt " " (its model card's true CFG); Sana's negative "" as SanaPipeline
    encodes it for guidance (`sana_negative_condition`). Trimmed to its valid tokens."""
    if isinstance(getattr(pipe, "transformer", None), SanaTransformer2DModel):
        enc = sana_negative_condition(pipe, max_sequence_length, device)
    else:
        caption = QWEN_IMAGE_NEGATIVE_PROMPT if isinstance(getattr(pipe, "transformer", None),
                                                           QwenImageTransformer2DModel) else ""
        enc = encode_captions(pipe, [caption], max_sequence_length, False, device)
    emb, mask = _trim(enc["prompt_embeds"], enc["prompt_attention_mask"])
    out = {"prompt_embeds": emb, "prompt_attention_mask": mask}
    if is_toy_flux(pipe):
        return {**out, "pooled_prompt_embeds": enc["pooled_prompt_embeds"]}
    if "pooled_prompt_embeds" in enc:
        out = {"prompt_embeds": torch.zeros_like(emb), "prompt_attention_mask": mask,
               "pooled_prompt_embeds": torch.zeros_like(enc["pooled_prompt_embeds"])}
    return out


def _pad_cat(embs: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batches' embeddings (b, L_i, D) and masks (b, L_i) of one shard joined, right-padded with zeros (masked
    out) to the longest L_i: QwenImagePipeline's `encode_prompt` pads each batch only to its own longest caption
    (the other pipelines pad to max_sequence_length, where this is `torch.cat`)."""
    length = max(e.shape[1] for e in embs)
    if all(e.shape[1] == length for e in embs):
        return torch.cat(embs), torch.cat(masks)
    emb = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in embs])
    mask = torch.cat([torch.nn.functional.pad(m, (0, length - m.shape[1])) for m in masks])
    return emb, mask


def _trim(emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(int(mask.sum(1).max()), 1)
    if int(mask[:, length:].sum()) != 0:
        raise ValueError("caption attention masks are not right-padded; cannot trim them")
    return emb[:, :length].contiguous(), mask[:, :length].contiguous()


def open_folder(out: Path, meta: dict[str, Any], config: TrainConfig, info: Any, device: torch.device,
                resume_keys: tuple[str, ...] = _RESUME_KEYS) -> None:
    """Resume a latent folder precomputed with the same settings (`resume_keys` of meta.json), or start one: rank 0
    writes meta.json with provenance. Raises `ILFConfigError` naming the first differing setting."""
    if (out / META_NAME).is_file():
        old = read_meta(out)
        diffs = [k for k in resume_keys if old.get(k) != meta[k]]
        if diffs:
            raise ILFConfigError("--out", str(out), f"an empty folder or one precomputed with the same settings "
                                 f"(it differs in {', '.join(diffs)}: e.g. {diffs[0]}={old.get(diffs[0])!r} there, "
                                 f"{meta[diffs[0]]!r} now)")
    elif info.rank == 0:
        write_json_atomic(out / META_NAME, {**meta, "provenance": provenance(config.to_dict(), device)})


def pending_shards(out: Path, n: int, size: int, latent_shape: list[int], info: Any) -> list[int]:
    """This rank's shards (every world_size-th) not yet written complete with `latent_shape` samples."""
    shards = [k for k in range(-(-n // size)) if k % info.world_size == info.rank]
    return [k for k in shards if not _shard_ok(out / shard_name(k), min(size, n - k * size), latent_shape)]


def precompute(config: TrainConfig, out_dir: str | Path, pipeline: Any = None, progress: bool = True) -> dict[str, Any]:
    """Encode `config.data` for `config.backbone` into `out_dir`; returns the folder's meta.json content."""
    out = Path(out_dir)
    info = dist.init()
    device = dist.device_for(config.device, info)
    pipe = pipeline if pipeline is not None else load_backbone(config.backbone)
    encoders_to(pipe, device)
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
    open_folder(out, meta, config, info, device)
    store = _dtype(config.data.storage_dtype)
    if task == "t2i" and info.rank == 0 and not (out / NULL_NAME).is_file():
        null = null_condition(pipe, max_len, device)
        null["prompt_attention_mask"] = null["prompt_attention_mask"].to(torch.int8)
        with atomic_path(out / NULL_NAME) as tmp:
            save_file({k: v if k == "prompt_attention_mask" else v.to(store) for k, v in null.items()}, str(tmp))
    n, size = len(source), config.data.shard_size
    todo = pending_shards(out, n, size, latent_shape, info)
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
            emb, mask = _trim(*_pad_cat(embs, masks))
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
