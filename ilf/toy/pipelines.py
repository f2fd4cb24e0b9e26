"""Stock diffusers pipelines over the shipped toy backbones (docs/formats.md, "The toy backbones").

    pipe = load_toy_pipeline("t2i")                  # PixArtAlphaPipeline, DPM-Solver++
    images = pipe(prompt=["two small red circles on the left"], num_inference_steps=20,
                  generator=torch.Generator().manual_seed(0), **toy_call_kwargs("t2i")).images
    pipe = load_toy_pipeline("c2i")                  # DiTPipeline, labels 0..9
    images = pipe(class_labels=[3], num_inference_steps=20, **toy_call_kwargs("c2i")).images

The t2i pipeline must be called with `clean_caption=False, use_resolution_binning=False,
max_sequence_length=12` (what `toy_call_kwargs("t2i")` returns): resolution binning assumes PixArt's
latent sizes and would render at 256x256.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiTPipeline, DiTTransformer2DModel, PixArtAlphaPipeline, PixArtTransformer2DModel

from ilf.errors import MissingAssetError
from ilf.toy.backbones import BACKBONE_NAMES, NUM_CLASSES, ToyPixelVAE, check_task, sampling_scheduler
from ilf.toy.encoder import MAX_SEQUENCE_LENGTH
from ilf.toy.pretrain import TRANSFORMER_DIR, WEIGHTS_NAME

ASSETS = Path(__file__).resolve().parent / "assets"
GUIDANCE_SCALE = 4.0  # default classifier-free guidance of the toy rows (DiT's and PixArt's pipelines default to 4.5/4)


def asset_path(task: str, root: str | Path | None = None) -> Path:
    """Folder of the shipped toy backbone for `task` (`ilf/toy/assets/toy-t2i` or `toy-c2i`)."""
    return Path(root or ASSETS) / BACKBONE_NAMES[check_task(task)]


def required_files(task: str) -> list[str]:
    files = [f"{TRANSFORMER_DIR}/config.json", f"{TRANSFORMER_DIR}/{WEIGHTS_NAME}"]
    if task == "t2i":
        files += ["text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"]
    return files


def check_assets(task: str, root: str | Path | None = None) -> Path:
    """Return the asset folder, or raise MissingAssetError naming the first missing file and the command that makes it."""
    folder = asset_path(task, root)
    for rel in required_files(task):
        if not (folder / rel).is_file():
            raise MissingAssetError(
                f"toy backbone file {rel} of {BACKBONE_NAMES[task]}", str(folder),
                f"ilf toy pretrain --task {task} --out {folder}",
                detail="the toy backbones ship with the repository; a missing file means a broken checkout, "
                       "or re-create it with that command (see docs/toy.md)")
    return folder


def toy_call_kwargs(task: str) -> dict:
    """Keyword arguments every call of the toy pipeline of `task` needs (see the module docstring)."""
    if check_task(task) == "t2i":
        return {"clean_caption": False, "use_resolution_binning": False, "max_sequence_length": MAX_SEQUENCE_LENGTH}
    return {}


def load_toy_pipeline(task: str, device: str | torch.device = "cpu", root: str | Path | None = None,
                      torch_dtype: torch.dtype = torch.float32) -> PixArtAlphaPipeline | DiTPipeline:
    """A stock PixArtAlphaPipeline (t2i) or DiTPipeline (c2i) with the shipped toy backbone and DPM-Solver++."""
    folder = check_assets(task, root)
    vae = ToyPixelVAE()
    if task == "t2i":
        from ilf.toy.encoder import load_caption_encoder

        tokenizer, text_encoder = load_caption_encoder(folder)
        transformer = PixArtTransformer2DModel.from_pretrained(folder / TRANSFORMER_DIR, torch_dtype=torch_dtype)
        pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder.to(torch_dtype), vae=vae,
                                   transformer=transformer, scheduler=sampling_scheduler())
    else:
        transformer = DiTTransformer2DModel.from_pretrained(folder / TRANSFORMER_DIR, torch_dtype=torch_dtype)
        pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=sampling_scheduler(),
                           id2label={i: str(i) for i in range(NUM_CLASSES)})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def toy_conditions(task: str, n: int, prompt_seed: int = 0) -> dict:
    """Pipeline conditions of `n` toy images: captions `toy_prompts(n, prompt_seed)` (t2i) or digits i % 10 (c2i)."""
    from ilf.toy.data import toy_prompts

    check_task(task)
    return {"prompt": toy_prompts(n, prompt_seed)} if task == "t2i" else {"class_labels": [i % NUM_CLASSES for i in range(n)]}


def sample_toy(pipe, task: str, cond: dict, steps: int, seed: int = 0, guidance_scale: float = GUIDANCE_SCALE):
    """(N, H, W, 3) images in [0, 1] of one toy pipeline call; the same `seed` gives the same initial noise."""
    return pipe(num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
                generator=torch.Generator().manual_seed(seed), **cond, **toy_call_kwargs(task)).images


@torch.no_grad()
def solver_gap(task: str, steps: tuple[int, ...] = (10, 12, 20), reference_steps: int = 100, n: int = 16,
               seed: int = 0, guidance_scale: float = GUIDANCE_SCALE, root: str | Path | None = None) -> dict:
    """Sampler discretisation error: per-image RMSE ([0, 1] pixels) of each step count's DPM-Solver++ sample to
    the `reference_steps` solution from the same initial noise; {steps: (mean, standard error, per-image list)}."""
    import numpy as np

    pipe = load_toy_pipeline(task, root=root)
    cond = toy_conditions(task, n, seed)
    ref = sample_toy(pipe, task, cond, reference_steps, seed, guidance_scale)
    out = {}
    for k in steps:
        err = np.sqrt(((sample_toy(pipe, task, cond, k, seed, guidance_scale) - ref) ** 2).mean(axis=(1, 2, 3)))
        out[k] = (float(err.mean()), float(err.std(ddof=1) / np.sqrt(n)), err.tolist())
    return out
