"""torchrun / SLURM data parallelism: process group set-up, device choice, gradient averaging.

    torchrun --nproc_per_node 8 -m ilf.cli train --config configs/train/pixart_alpha_512.yaml --out runs/a512
    srun torchrun --nnodes $SLURM_NNODES --nproc_per_node 8 --rdzv_backend c10d \
         --rdzv_endpoint $MASTER_ADDR:29500 -m ilf.cli train --config ... --out ...

NCCL on GPUs, gloo on CPU. Only the feedback block and the scales train (~21M of ~630M parameters),
so gradients are averaged with one flat all-reduce per optimizer step, after gradient accumulation
(what DDP does with `no_sync` on all but the last micro-batch, without wrapping the model: the teacher
forward then runs the backbone directly inside `ilf.bypass`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> DistInfo:
    """Join the process group torchrun describes (env WORLD_SIZE, RANK, LOCAL_RANK); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        tdist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def device_for(name: str, info: DistInfo) -> torch.device:
    """`auto`: this rank's GPU (cuda:LOCAL_RANK) if there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{info.local_rank}")
    return torch.device(name)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Mean of every rank's gradients, in one flat all-reduce (each rank's grads are already its local mean)."""
    if not info.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def broadcast_parameters(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Rank 0's values on every rank (the feedback copy is deterministic, a fresh init might not be)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for p in params:
            tdist.broadcast(p.data, src=0)


def all_reduce_scalars(values: list[float], info: DistInfo) -> list[float]:
    """Mean of a few logged numbers over ranks."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if tdist.get_backend() == "nccl":
        t = t.cuda()
    tdist.all_reduce(t)
    return (t / info.world_size).cpu().tolist()


def cleanup(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
