"""The training loop of the feedback module (paper Sec. 3.2, 4.1).

    ilf train --config configs/train/toy_t2i.yaml --out results/runs/toy_t2i            # one process
    torchrun --nproc_per_node 8 -m ilf.cli train --config configs/train/pixart_alpha_512.yaml --out runs/a512
    ilf train --config ... --out runs/a512 --resume                                      # after a kill

Only `transformer.ilf_feedback` and `transformer.ilf_scales` train (AdamW); the backbone is frozen and in
eval mode (no dropout anywhere, condition dropout is done explicitly). Each optimizer step sees exactly
`global_batch_size` samples: micro-batches per rank, accumulated, gradients averaged over ranks once.
Everything is validated (checkpoint, data folder, dataset size, latent shapes) before the first step.
A loss or gradient norm that is not finite stops the run before that iteration's step (`NonFiniteLossError`,
naming the iteration; a `stopped` record in train_log.jsonl); the checkpoints on disk stay valid.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from ..feedback import apply_feedback, feedback_parameters
from ..checkpoint import load_feedback, save_feedback
from ..errors import CheckpointError, ILFConfigError, NonFiniteLossError
from ..io import append_jsonl, fsync_dir, read_jsonl, write_json_atomic, write_text_atomic
from ..harness.provenance import provenance
from . import distributed as dist
from .backbone import load_backbone, null_class_label, objective_of, task_of
from .config import TrainConfig
from .data import LatentShards, MicroBatchSampler, TrainStream, check_fits, collate
from .diagnostics import DIAGNOSTICS_NAME, measure, probe_batch
from .objectives import make_objective
from .t_post import use_train_t_post
from .state import (check_resumable, list_checkpoints, load_training_state, prune_checkpoints, read_state,
                    write_checkpoint)

LOG_NAME = "train_log.jsonl"


def _autocast(config: TrainConfig, device: torch.device) -> Callable[[], Any] | None:
    use = config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and device.type == "cuda")
    if not use:
        return None
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _resume_point(run_dir: Path, resume: bool, resume_from: str | Path | None) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    if resume_from is not None:
        return Path(resume_from)
    if resume:
        return ckpts[-1][1] if ckpts else None
    if ckpts or (run_dir / "final").exists():
        raise ValueError(f"--out {run_dir} already holds a training run (checkpoints or final/); pass --resume to "
                         "continue it, or choose another --out")
    return None


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log (or diagnostics) records written after the checkpoint a run resumes from (a killed run's last steps)."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("iteration", 0) <= iteration]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in keep))


def _write_final(run_dir: Path, transformer: torch.nn.Module, record: dict[str, Any]) -> Path:
    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_feedback(transformer, tmp, extra={"training_iteration": record["iteration"]})
    write_json_atomic(tmp / "train_info.json", record)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(run_dir)  # `final/` on disk before the workflow takes the run as done
    return final


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, resume_from: str | Path | None = None,
          pipeline: Any = None, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> Path:
    """Train the feedback module of `config`; returns `<run_dir>/final` (loadable with `ilf.load_feedback`).

    `pipeline` replaces loading `config.backbone` (a stock pipeline object); `on_step(iteration)` is called
    after every optimizer step (tests use it to simulate a kill).
    """
    run_dir = Path(run_dir)
    info = dist.init()
    device = dist.device_for(config.device, info)
    # 1. Everything that can be wrong is checked before any step.
    ckpt = _resume_point(run_dir, resume, resume_from)
    state = read_state(ckpt) if ckpt is not None else None
    if state is not None:
        check_resumable(state, config.to_dict(), ckpt)
    if not config.data.latents_dir:
        raise ILFConfigError("data.latents_dir", None, "the folder `ilf precompute` wrote (or pass --latents DIR)")
    shards = LatentShards(config.data.latents_dir)
    pipe = pipeline if pipeline is not None else load_backbone(config.backbone)
    transformer = pipe.transformer
    task = task_of(transformer)
    check_fits(shards.meta, transformer, task, config.data.latents_dir)
    total = config.total_iterations(len(shards))
    acc = config.accumulation_steps(info.world_size)
    if objective_of(config.objective, pipe) == "flow" and config.train_t_post != "t":
        raise ILFConfigError("train_t_post", config.train_t_post, "t for a flow-matching backbone")
    if config.frozen_storage_dtype == "bfloat16":  # before attaching: F is then built in the compute dtype
        transformer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    transformer.to(device)
    torch.manual_seed(config.seed)
    apply_feedback(transformer, config.feedback)
    start = 0
    if state is not None:
        load_feedback(transformer, ckpt)  # CheckpointError if it does not fit this backbone
        start = int(state["iteration"])
        if start > total:
            raise CheckpointError(f"checkpoint {ckpt} is at iteration {start}, beyond this run's {total} iterations")
    objective = make_objective(config.objective, config.distill, pipe, config.teacher_steps, _autocast(config, device),
                               shards.meta.get("resolution"), tuple(shards.meta["latent_shape"]),
                               config.timestep_sampling, config.logit_mean, config.logit_std, config.guidance,
                               shards.meta.get("max_sequence_length"))
    num_t = objective.num_train_timesteps
    use_train_t_post(transformer, config.train_t_post, config.train_t_post_steps, pipe.scheduler.config, num_t)
    transformer.eval()
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = feedback_parameters(transformer)
    o = config.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_iterations,
                                 num_training_steps=total)
    if state is not None:
        load_training_state(ckpt, state, optimizer, lr_scheduler, info, device)
    else:
        dist.broadcast_parameters(params, info)
    stream = TrainStream(shards, config.seed, num_t, config.cond_dropout,
                         null_class_label(transformer) if task == "c2i" else None, objective.sampler)
    sampler = MicroBatchSampler(start, total, config.global_batch_size, info.rank, info.world_size, acc)
    loader = torch.utils.data.DataLoader(stream, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.data.num_workers, pin_memory=device.type == "cuda")
    log_path, diag_path = run_dir / LOG_NAME, run_dir / DIAGNOSTICS_NAME
    prov = provenance(config.to_dict(), device)
    probe = {k: v.to(device) for k, v in probe_batch(shards, config.seed, num_t).items()}

    def diagnose(iteration: int) -> None:  # rank 0 only: measuring is deterministic and leaves the RNG alone
        if info.is_main:
            append_jsonl(diag_path, {"iteration": iteration, **measure(objective, probe)})

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "train_config.json", config.to_dict())
        _truncate_log(log_path, start)
        _truncate_log(diag_path, start)
        append_jsonl(log_path, {"event": "resume" if start else "start", "iteration": start, "total_iterations": total,
                                "world_size": info.world_size, "accumulation": acc, "num_samples": len(shards),
                                "config": config.to_dict(), **prov})
        if start == 0:
            diagnose(0)
    # 2. The loop.
    bar = tqdm(total=total, initial=start, unit="it", desc=f"train {config.name} ({config.distill})",
               disable=not (progress and info.is_main))
    it, micro, sums, t_last, it_last = start, 0, {}, time.perf_counter(), start
    nonfinite: float | None = None  # this rank's first non-finite micro-batch loss of the current step
    last_checkpoint = start or None
    scale = info.world_size / config.global_batch_size  # sum of per-sample losses / G after the rank average
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, terms = objective(batch)
        (loss.sum() * scale).backward()
        for k, v in {"loss": loss.detach(), **terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
        if nonfinite is None and not math.isfinite(sums["loss"]):
            nonfinite = sums["loss"]
        micro += 1
        if micro % acc:
            continue
        dist.average_gradients(params, info)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm if o.max_grad_norm else float("inf"))
        # every rank stops on the same step: a non-finite loss on any rank, or the (rank-averaged) gradient norm
        bad_loss = dist.all_reduce_scalars([0.0 if nonfinite is None else 1.0], info)[0] > 0
        if bad_loss or not math.isfinite(float(grad_norm)):
            what, value = ("loss", nonfinite if nonfinite is not None else math.nan) if bad_loss else \
                ("gradient norm", float(grad_norm))
            error = NonFiniteLossError(config.name, it + 1, what, value, last_checkpoint)
            if info.is_main:
                append_jsonl(log_path, {"event": "stopped", "iteration": it + 1, "reason": str(error)})
            bar.close()
            raise error
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        bar.update(1)
        logged = it % config.log_interval == 0 or it == total or it == start + 1
        if logged:
            now = time.perf_counter()
            keys = sorted(sums)
            means = dist.all_reduce_scalars([sums[k] / ((it - it_last) * config.global_batch_size / info.world_size)
                                             for k in keys], info)
            rec = {"iteration": it, "epoch": it * config.global_batch_size / len(shards),
                   "samples_seen": it * config.global_batch_size, **dict(zip(keys, means)),
                   "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "scales": transformer.ilf_scales.detach().cpu().tolist(),
                   "samples_per_s": (it - it_last) * config.global_batch_size / max(now - t_last, 1e-9)}
            if info.is_main:
                append_jsonl(log_path, rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            sums, t_last, it_last = {}, now, it
        checkpointed = it % config.checkpoint_interval == 0 or it in config.keep_iterations or it == total
        if logged or checkpointed:
            diagnose(it)
        if checkpointed:
            record = {"samples_seen": it * config.global_batch_size, "epoch": it * config.global_batch_size / len(shards),
                      "total_iterations": total, "config": config.to_dict(), **prov}
            write_checkpoint(run_dir, it, transformer, optimizer, lr_scheduler, info, device, record)
            last_checkpoint = it
            if info.is_main:
                prune_checkpoints(run_dir, config.keep_iterations, config.keep_last)
        if on_step is not None:
            on_step(it)
    bar.close()
    final = run_dir / "final"
    if info.is_main:
        final = _write_final(run_dir, transformer, {"iteration": it, "total_iterations": total,
                                                    "config": config.to_dict(), **prov})
    dist.barrier(info)
    return final
