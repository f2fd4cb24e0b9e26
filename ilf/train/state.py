"""Training checkpoints: everything an exact resume needs, as safetensors + JSON, written atomically.

`<run_dir>/checkpoints/iter_{N:06d}/` holds
  ilf_feedback.safetensors + ilf_feedback.json   feedback block + scales (`ilf.load_feedback` reads them)
  optimizer.safetensors                          AdamW moments and step counts
  rng_rank{R:03d}.safetensors                    torch CPU (and CUDA) generator state of every rank
  training_state.json                            iteration, data position, optimizer param groups, LR-scheduler
                                                 state, the run's config, provenance and the sha256 of each file
A checkpoint is built in a hidden temporary folder and renamed into place once complete, so a killed run
leaves either the whole checkpoint or none. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_feedback
from ..errors import CheckpointError
from ..io import fsync_dir, fsync_file, sha256_file, write_json_atomic
from . import distributed as dist
from .config import RESUME_CRITICAL, RESUME_DEFAULTS, flat_items

STATE_NAME = "training_state.json"
OPTIM_NAME = "optimizer.safetensors"
CKPT_RE = re.compile(r"^iter_(\d{6,})$")
FORMAT_VERSION = 1


def rng_name(rank: int) -> str:
    return f"rng_rank{rank:03d}.safetensors"


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:06d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those holding training_state.json), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = CKPT_RE.match(d.name)
        if m and d.is_dir() and (d / STATE_NAME).is_file():
            out.append((int(m.group(1)), d))
    return sorted(out)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(device)
    return out


def write_checkpoint(run_dir: Path, iteration: int, transformer: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     lr_scheduler: Any, info: dist.DistInfo, device: torch.device, record: dict[str, Any]) -> Path:
    """Write checkpoint `iteration` (all ranks call this; rank 0 writes the shared files and renames)."""
    final = checkpoint_dir(run_dir, iteration)
    tmp = final.parent / f".{final.name}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier(info)
    save_file(_rng_tensors(device), str(tmp / rng_name(info.rank)))
    dist.barrier(info)
    if info.is_main:
        save_feedback(transformer, tmp, extra={"training_iteration": iteration})
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / OPTIM_NAME))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        state = {"format_version": FORMAT_VERSION, "iteration": iteration, "world_size": info.world_size,
                 "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(), "files": files, **record}
        write_json_atomic(tmp / STATE_NAME, state)
        for p in tmp.iterdir():  # data on disk before the rename makes the checkpoint visible
            fsync_file(p)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)  # the rename on disk before a later prune or resume relies on it
    dist.barrier(info)
    return final


def read_state(path: Path) -> dict[str, Any]:
    """training_state.json of a checkpoint, after checking every file against its recorded sha256."""
    path = Path(path)
    state_path = path / STATE_NAME
    if not state_path.is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no {STATE_NAME})")
    try:
        state = json.loads(state_path.read_text())
        files = state["files"]
        int(state["iteration"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"corrupted training checkpoint {state_path}: {err}") from None
    for name in (WEIGHTS_NAME, CONFIG_NAME, OPTIM_NAME):
        if name not in files:
            raise CheckpointError(f"training checkpoint {path} does not record {name}")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"training checkpoint {path} is incomplete: {name} is missing")
        if sha256_file(f) != digest:
            raise CheckpointError(f"training checkpoint {path} is corrupted: {name} does not match its recorded sha256 "
                                  f"(delete {path} to resume from the previous checkpoint)")
    return state


def check_resumable(state: dict[str, Any], config_dict: dict[str, Any], path: Path) -> None:
    """The resumed run must be the same run: the fields in RESUME_CRITICAL may not change."""
    old, new = flat_items(state.get("config", {})), flat_items(config_dict)
    for key, value in RESUME_DEFAULTS.items():  # checkpoints made before a field existed trained with its default
        old.setdefault(key, value)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if any(key == c or key.startswith(c + ".") for c in RESUME_CRITICAL) and old.get(key) != new.get(key):
            diffs.append(f"{key}: checkpoint {old.get(key)!r}, config {new.get(key)!r}")
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made by a different run configuration: " + "; ".join(diffs[:6])
                              + " (resume with the run's own config, or train into a new --out)")


def load_training_state(path: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                        info: dist.DistInfo, device: torch.device) -> None:
    """Optimizer, LR-scheduler and (same world size) this rank's RNG state from a verified checkpoint."""
    try:
        tensors = load_file(str(path / OPTIM_NAME))
        opt_state = _optimizer_state(tensors, state["optimizer"])
        for st in opt_state["state"].values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(device)
        optimizer.load_state_dict(opt_state)
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"optimizer state of {path} does not fit this run: {err}") from None
    rng = path / rng_name(info.rank)
    if state.get("world_size") == info.world_size and rng.is_file():
        r = load_file(str(rng))
        torch.set_rng_state(r["torch_cpu"])
        if device.type == "cuda" and "torch_cuda" in r:
            torch.cuda.set_rng_state(r["torch_cuda"], device)


def prune_checkpoints(run_dir: Path, keep_iterations: list[int], keep_last: int) -> None:
    """Delete checkpoints that are neither in the keep-list nor among the `keep_last` most recent."""
    ckpts = list_checkpoints(run_dir)
    recent = {it for it, _ in ckpts[-keep_last:]}
    for it, path in ckpts:
        if it not in recent and it not in set(keep_iterations):
            shutil.rmtree(path, ignore_errors=True)
