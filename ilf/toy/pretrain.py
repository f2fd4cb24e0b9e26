"""Pre-training of the toy backbones: standard epsilon-prediction DDPM training (DiT/PixArt recipe), and rectified
flow matching for the FLUX-class backbone (`--backbone toy-flux`, ilf.toy.flux).

    ilf toy pretrain --task t2i --out ilf/toy/assets/toy-t2i [--device cuda] [--steps N] [--resume] [--state-dir D]
    ilf toy pretrain --task c2i --out ilf/toy/assets/toy-c2i
    ilf toy pretrain --task t2i --backbone toy-flux --out ilf/toy/assets/toy-flux

Loss: || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, c) ||^2 with t ~ U{0..999} on the
linear DDPM schedule (toy-flux: || (eps - x0) - v_theta((1 - s) x0 + s eps, s, c) ||^2 with logit-normal s,
ilf.toy.flux); the condition is dropped (empty caption / null class 1000) 10% of the time so
classifier-free guidance works. AdamW at a constant rate after a linear warm-up, EMA of the weights
(the EMA is what ships, stored as float16 safetensors + config.json). Batches, timesteps and noise
come from one seeded generator; a run stopped by `--max-minutes` (or killed after a checkpoint)
continues exactly with `--resume`, and stopping at step N gives the same weights as `--steps N`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ilf.io import append_jsonl, atomic_path, sha256_file, write_json_atomic
from ilf.harness.provenance import provenance
from ilf.toy import data as toy_data
from ilf.errors import ILFConfigError
from ilf.toy.backbones import (BACKBONE_NAMES, NULL_CLASS, RESOLUTION, build_transformer, check_task, num_parameters,
                               training_scheduler)

TRANSFORMER_DIR = "transformer"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class PretrainConfig:
    """Settings of one pre-training run (defaults = the shipped backbones)."""

    task: str = "t2i"  # t2i (shapes + captions) or c2i (digits + labels)
    steps: int = 8000  # optimiser steps
    batch_size: int = 128
    lr: float = 3e-4  # AdamW, constant after warm-up
    warmup: int = 500  # linear warm-up steps
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # share of examples trained unconditionally (classifier-free guidance)
    num_images: int = 30000  # t2i: rendered training scenes (seed `seed`); c2i uses all 1,797 digits
    seed: int = 0
    checkpoint_every: int = 1000
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weight min(SNR, gamma) / SNR (Hang et al. 2023); None = plain MSE
    bf16: bool = False  # bfloat16 autocast of the forward pass (CUDA only; weights, EMA and optimiser stay float32)
    backbone: str | None = None  # None: the task's DDPM backbone (toy-t2i / toy-c2i); "toy-flux": flow matching (t2i)


def backbone_name(cfg: PretrainConfig) -> str:
    """The toy backbone a config trains ("toy-t2i", "toy-c2i" or "toy-flux"); refuses a backbone the task has not."""
    check_task(cfg.task)
    name = cfg.backbone or BACKBONE_NAMES[cfg.task]
    allowed = [BACKBONE_NAMES[cfg.task]] + (["toy-flux"] if cfg.task == "t2i" else [])
    if name not in allowed:
        raise ILFConfigError("backbone", name, allowed)
    if name == "toy-flux" and cfg.min_snr_gamma is not None:
        raise ILFConfigError("min_snr_gamma", cfg.min_snr_gamma,
                             "None for toy-flux (flow matching has no SNR weighting)")
    return name


def default_state_dir(task: str, backbone: str | None = None) -> Path:
    """Resume state (not shipped): `results/toy/pretrain-<task>` (toy-flux: `pretrain-toy-flux`) under the working
    directory."""
    return Path("results") / "toy" / f"pretrain-{backbone if backbone == 'toy-flux' else task}"


def _cached_embeddings(cache: Path, key: dict) -> dict[str, torch.Tensor] | None:
    """The cached caption embeddings if their record names `key` and the file matches the record's sha256
    (records without one: if the file loads); None to compute them again."""
    record = cache.with_suffix(".json")
    if not (cache.is_file() and record.is_file()):
        return None
    try:
        saved, digest = json.loads(record.read_text()), sha256_file(cache)
        if {k: saved.get(k) for k in key} != key or saved.get("sha256", digest) != digest:
            return None
        return load_file(cache)
    except Exception:  # a damaged record or file is computed again
        return None


def prepare_data(cfg: PretrainConfig, out: Path, state_dir: Path) -> dict[str, torch.Tensor]:
    """Training tensors: images in [-1, 1] (N, 3, H, W) and, per image, the condition index.

    t2i: the caption embeddings of the frozen shipped encoder are computed once per distinct caption
    (row 0 = the empty caption, used for dropout) and cached in the state folder. The encoder lives in `out`
    (created there, seeded, on the first run); toy-flux reads the one shipped with toy-t2i instead.
    """
    if cfg.task == "c2i":
        images, labels = toy_data.load_digits_dataset(RESOLUTION)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return {"x": x, "cond": torch.from_numpy(labels)}
    images, captions, _ = toy_data.make_shapes_dataset(cfg.num_images, cfg.seed, RESOLUTION)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    unique = [""] + sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    if backbone_name(cfg) == "toy-flux":
        from ilf.toy.pipelines import check_assets

        out = check_assets("t2i")  # the shipped caption encoder conditions both t2i backbones
    if not (out / "text_encoder" / "model.safetensors").exists():  # first run: create the frozen, seeded encoder
        from ilf.toy.encoder import build_caption_encoder, save_caption_encoder

        save_caption_encoder(*build_caption_encoder(cfg.seed), out)
    key = {"captions": unique,
           "encoder_sha256": hashlib.sha256((out / "text_encoder" / "model.safetensors").read_bytes()).hexdigest()}
    cache = state_dir / "caption_embeddings.safetensors"
    table = _cached_embeddings(cache, key)
    if table is None:
        from ilf.toy.encoder import encode_captions, load_caption_encoder

        emb, mask = encode_captions(*load_caption_encoder(out), unique)
        table = {"embeddings": emb.float().contiguous(), "mask": mask.contiguous()}
        with atomic_path(cache) as tmp:  # on the disk before the record that names its sha256
            save_file(table, tmp)
        write_json_atomic(cache.with_suffix(".json"), {**key, "sha256": sha256_file(cache)})
    return {"x": x, "cond": torch.tensor([index[c] for c in captions]), **table}


def _model_kwargs(cfg: PretrainConfig, batch: dict[str, torch.Tensor], idx: torch.Tensor, drop: torch.Tensor) -> dict:
    cond = batch["cond"][idx]
    if cfg.backbone == "toy-flux":
        cond = torch.where(drop, torch.zeros_like(cond), cond)
        return {"encoder_hidden_states": batch["embeddings"][cond], "pooled_projections": batch["pooled"][cond],
                "img_ids": batch["img_ids"], "txt_ids": batch["txt_ids"]}
    if cfg.task == "c2i":
        return {"class_labels": torch.where(drop, torch.full_like(cond, NULL_CLASS), cond)}
    cond = torch.where(drop, torch.zeros_like(cond), cond)  # row 0 = empty caption
    return {"encoder_hidden_states": batch["embeddings"][cond], "encoder_attention_mask": batch["mask"][cond],
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def save_backbone(model: torch.nn.Module, out: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `out/transformer/` (config.json + float16 safetensors), loadable by `from_pretrained`."""
    target = out / TRANSFORMER_DIR
    target.mkdir(parents=True, exist_ok=True)
    model.save_config(target)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(target / WEIGHTS_NAME) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    os.chmod(target / WEIGHTS_NAME, 0o644)


def _save_state(state_dir: Path, step: int, model, ema, opt, gen: torch.Generator, cfg: PretrainConfig) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(state_dir / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    with atomic_path(state_dir / "ema.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, tmp)
    with atomic_path(state_dir / "optimizer.pt") as tmp:  # tensors only: reloaded with weights_only=True
        torch.save({"opt": opt.state_dict(), "gen": gen.get_state()}, tmp)
    write_json_atomic(state_dir / "state.json", {"step": step, "config": asdict(cfg)})


def pretrain(cfg: PretrainConfig, out: str | Path, device: str = "cpu", resume: bool = False,
             max_minutes: float | None = None, state_dir: str | Path | None = None,
             init_from: str | Path | None = None) -> dict:
    """Train the toy backbone of `cfg.task` and write it to `out`; returns the summary written to pretrain.json."""
    name = backbone_name(cfg)
    flow = name == "toy-flux"
    out = Path(out)
    state_dir = Path(state_dir) if state_dir else default_state_dir(cfg.task, name)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, out, state_dir)
    if flow:  # packed FLUX tokens (N, 64, 48), pooled caption embeddings, position ids
        from ilf.toy.flux import build_flux_transformer, pack_pixels, pooled_embedding, position_ids

        data["x"] = pack_pixels(data["x"])
        data["pooled"] = pooled_embedding(data["embeddings"], data["mask"])
        data["img_ids"], data["txt_ids"] = position_ids(text_length=data["embeddings"].shape[1])
    batch = {k: v.to(device) for k, v in data.items()}
    n = len(batch["x"])
    model = build_flux_transformer(cfg.seed) if flow else build_transformer(cfg.task, cfg.seed)
    previous = None
    if init_from is not None:  # continue from a written backbone (its EMA weights), fresh optimiser
        init_from = Path(init_from)
        model.load_state_dict({k: v.float() for k, v in load_file(init_from / TRANSFORMER_DIR / WEIGHTS_NAME).items()})
        if (init_from / "pretrain.json").exists():
            previous = json.loads((init_from / "pretrain.json").read_text())
    model = model.to(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    model.eval()  # no dropout layers; eval also turns off DiT's built-in label dropout (we drop explicitly)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    sched = training_scheduler()
    abar = sched.alphas_cumprod.to(device)
    start = 0
    if resume and (state_dir / "state.json").exists():
        saved = json.loads((state_dir / "state.json").read_text())
        mutable = ("steps", "checkpoint_every")  # a run may be extended; everything else must match
        if {k: v for k, v in saved["config"].items() if k not in mutable} != \
                {k: v for k, v in asdict(cfg).items() if k not in mutable}:
            raise ValueError(f"--resume: the run in {state_dir} used a different config {saved['config']}; "
                             f"got {asdict(cfg)} (start afresh without --resume)")
        model.load_state_dict(load_file(state_dir / "model.safetensors", device=device))
        ema.load_state_dict(load_file(state_dir / "ema.safetensors", device=device))
        extra = torch.load(state_dir / "optimizer.pt", map_location=device, weights_only=True)
        opt.load_state_dict(extra["opt"])
        gen.set_state(extra["gen"].cpu())
        start = saved["step"]
    log_path = state_dir / "log.jsonl"
    t0 = time.time()
    losses: list[float] = []  # mean loss of each 100 steps
    window: list[torch.Tensor] = []
    step = start
    for step in tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps, desc=f"pretrain {cfg.task}"):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / max(cfg.warmup, 1))
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen, device=device)
        if flow:  # logit-normal s in (0, 1) (Esser et al. 2024, Sec. 3.1)
            t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen, device=device))
        else:
            t = torch.randint(0, len(abar), (cfg.batch_size,), generator=gen, device=device)
        noise = torch.randn(batch["x"][idx].shape, generator=gen, device=device)
        drop = torch.rand(cfg.batch_size, generator=gen, device=device) < cfg.cond_dropout
        x0 = batch["x"][idx]
        if flow:
            s = t.view(-1, 1, 1)
            xt, target = (1 - s) * x0 + s * noise, noise - x0  # rectified flow path and its velocity
        else:
            a = abar[t].view(-1, 1, 1, 1)
            xt, target = a.sqrt() * x0 + (1 - a).sqrt() * noise, noise  # forward process q(x_t | x_0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.startswith("cuda")):
            pred = (model(hidden_states=xt, timestep=t, **_model_kwargs(cfg, batch, idx, drop)) if flow
                    else model(xt, timestep=t, **_model_kwargs(cfg, batch, idx, drop))).sample
        loss = (pred.float() - target).pow(2).mean(dim=tuple(range(1, pred.ndim)))
        if cfg.min_snr_gamma is not None:
            snr = abar[t] / (1 - abar[t])
            loss = loss * snr.clamp(max=cfg.min_snr_gamma) / snr
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        window.append(loss.detach())
        if step % 100 == 0:  # one host sync per 100 steps
            losses.append(torch.stack(window).mean().item())
            window.clear()
            append_jsonl(log_path, {"step": step, "loss": losses[-1], "seconds": time.time() - t0})
        stop = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if step % cfg.checkpoint_every == 0 or stop or step == cfg.steps:
            _save_state(state_dir, step, model, ema, opt, gen, cfg)
        if stop:
            break
    if window:
        losses.append(torch.stack(window).mean().item())
    # A run stopped by --max-minutes at step N ships the same weights as `--steps N` (constant rate after warm-up).
    summary = {
        "task": cfg.task, "backbone": name, "config": dict(asdict(cfg), steps=step), "steps_done": step,
        "final_loss": float(np.mean(losses[-5:])) if losses else None,  # mean of the last 500 steps
        "seconds": time.time() - t0,
        "num_parameters": num_parameters(model), "device": device,
        "command": (f"ilf toy pretrain --task {cfg.task} --out {out} --steps {step} --batch-size {cfg.batch_size} "
                    f"--lr {cfg.lr} --warmup {cfg.warmup} --num-images {cfg.num_images} --seed {cfg.seed} "
                    f"--device {device}" + (" --backbone toy-flux" if flow else "")
                    + (f" --ema-decay {cfg.ema_decay}" if cfg.ema_decay != PretrainConfig.ema_decay else "") + (f" --min-snr-gamma {cfg.min_snr_gamma}" if cfg.min_snr_gamma else "")
                    + (f" --init-from {init_from}" if init_from else "") + (" --bf16" if cfg.bf16 else "")),
        "previous_stage": previous,
        "provenance": provenance(asdict(cfg), device),
    }
    save_backbone(ema, out)
    write_json_atomic(out / "pretrain.json", summary)
    os.chmod(out / "pretrain.json", 0o644)
    return dict(summary, finished=step >= cfg.steps)
