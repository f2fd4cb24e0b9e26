"""Feedback checkpoints: the feedback block and scales as safetensors, the config as JSON.

A directory holds `ilf_feedback.safetensors` (tensors `feedback.<param>` and `scales`) and
`ilf_feedback.json` (FeedbackConfig, backbone class, depth and block parameter shapes). A path ending in
`.safetensors` names the weights file itself; its JSON then sits beside it (`name.json`). The JSON holds the
weights file's sha256 (`weights_sha256`); loading verifies it (checkpoints written before it was recorded load
unverified), checks that the backbone class, depth and block shapes match and says what differs; nothing is
unpickled. Parameter names are those of the eager, plain block (a `torch.compile` wrapper's `_orig_mod.` is not part,
nor is a LoRA: F holds none, METHOD.md "LoRA"), so a checkpoint loads with or without a LoRA on the backbone.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import unwrap_module
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from .adapters import adapter_for, model_blocks
from .adapters._lora import plain_names
from .attach import get_attachment, remove, resolve_target
from .config import FeedbackConfig
from .errors import AlreadyAttachedError, CheckpointError, ILFConfigError
from .feedback import apply_feedback, scale_shape
from .io import atomic_path, write_json_atomic

WEIGHTS_NAME = "ilf_feedback.safetensors"
CONFIG_NAME = "ilf_feedback.json"
FORMAT_VERSION = 1


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) files of a checkpoint: a directory, or a `.safetensors` path with its `.json` beside."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / WEIGHTS_NAME, path / CONFIG_NAME


def _block_shapes(block: nn.Module) -> dict[str, list[int]]:
    """Parameter shapes by the plain block's names (a LoRA-carrying block's base layers, as F holds them)."""
    block = unwrap_module(block)
    return {n: list(p.shape) for n, p in plain_names(block, dict(block.named_parameters())).items()}


def save_feedback(target: Any, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the attached feedback block + scales and its config to `directory` (atomically, file by file).

    Writes `ilf_feedback.safetensors` (tensors `feedback.<param>` in the block's dtype and `scales`, float32,
    shape (m,)) and `ilf_feedback.json` (the `FeedbackConfig`, backbone class, depth, block parameter shapes,
    the weights' sha256 and `extra`); nothing is pickled.

    Args:
        target: a transformer or pipeline with ILF attached.
        directory: a directory (created if missing) or a `.safetensors` path (its `.json` is written beside it).
        extra: more JSON-serialisable fields for the config file (e.g. the training step).

    Returns:
        `directory` as a `Path`.

    Raises:
        ILFConfigError: ILF is not attached, or the path runs through an existing file.

    Example:
        ```py
        model = ilf.apply_feedback(pipe, ilf.FeedbackConfig(8, 19))
        ...  # train ilf.feedback_parameters(model)
        ilf.save_feedback(model, "runs/pixart/final", extra={"step": 10000})
        ```
    """
    model, _ = resolve_target(target)
    state = get_attachment(model)
    if state is None or getattr(state.method, "feedback", None) is None:
        raise ILFConfigError("target", type(model).__name__, "a model with ILF attached (call apply_feedback first)")
    weights_file, config_file = checkpoint_files(directory)
    parent = weights_file.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ILFConfigError("directory", str(directory),
                             f"a directory (or a path ending in .safetensors), but {blocker} is an existing file")
    parent.mkdir(parents=True, exist_ok=True)
    block = unwrap_module(state.method.feedback)  # names without a compile wrapper's `_orig_mod.`
    tensors = {f"feedback.{n}": p.detach().contiguous().cpu() for n, p in block.state_dict().items()}
    tensors["scales"] = state.method.scales.detach().float().cpu().contiguous()  # float32 whatever the backbone's dtype
    meta = {
        "format_version": FORMAT_VERSION,
        "feedback_config": state.config.to_dict(),
        "backbone_class": type(model).__name__,
        "num_blocks": len(model_blocks(model)),
        "block_class": type(block).__name__,
        "block_shapes": _block_shapes(model_blocks(model)[state.config.loop_end]),
        **(extra or {}),
    }
    data = save(tensors, metadata={"format": "pt", "ilf_format_version": str(FORMAT_VERSION)})
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    with atomic_path(weights_file) as tmp:
        tmp.write_bytes(data)
    write_json_atomic(config_file, meta)
    return Path(directory)


def read_feedback_config(directory: str | Path) -> dict[str, Any]:
    """The JSON side of a checkpoint, with a clear error if missing or corrupted."""
    path = checkpoint_files(directory)[1]
    if not path.is_file():
        raise CheckpointError(f"no feedback checkpoint config at {path} (a checkpoint is a directory with "
                              f"{WEIGHTS_NAME} + {CONFIG_NAME}, or a .safetensors file with its .json beside)")
    try:
        meta = json.loads(path.read_text())
        FeedbackConfig.from_dict(meta["feedback_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"corrupted feedback checkpoint config {path}: {err}") from err
    return meta


def _check_compatible(model: nn.Module, meta: dict[str, Any], directory: Path) -> None:
    diffs = []
    if meta.get("backbone_class") != type(model).__name__:
        diffs.append(f"backbone class: checkpoint {meta.get('backbone_class')!r}, model {type(model).__name__!r}")
    if meta.get("num_blocks") != len(model_blocks(model)):
        diffs.append(f"number of blocks: checkpoint {meta.get('num_blocks')}, model {len(model_blocks(model))}")
    cfg = meta["feedback_config"]
    if not diffs:
        have = _block_shapes(model_blocks(model)[cfg["loop_end"]])
        want = meta.get("block_shapes", {})
        for name in sorted(set(have) | set(want)):
            if have.get(name) != want.get(name):
                diffs.append(f"block parameter {name}: checkpoint {want.get(name)}, model {have.get(name)}")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise CheckpointError(f"feedback checkpoint {directory} does not fit this backbone: {shown}")


def _read_weights(weights: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked against the sha256 its JSON records (None: not recorded)."""
    try:
        data = weights.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointError(f"feedback weights {weights} do not match the sha256 recorded in their JSON "
                                  "(the file was changed or damaged after saving)")
        return load(data)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read feedback weights {weights}: {err}") from err


def load_feedback(target: Any, directory: str | Path, config_overrides: dict[str, Any] | None = None) -> nn.Module:
    """Attach ILF from a checkpoint written by `save_feedback` (or load into an attached, compatible one).

    The feedback block's weights are cast to the backbone's block dtype; the scales stay float32. An ILF already
    attached is replaced (a bare transformer keeps following the scheduler it followed). The model is left
    untouched if the checkpoint is corrupted or does not match.

    Args:
        target: a transformer or a stock pipeline holding one, with nothing or ILF attached.
        directory: the checkpoint directory, or its `.safetensors` file (the `.json` beside it).
        config_overrides: inference-only fields to change in the stored config: `feedback_steps`, `t_post`,
            `ratio` (e.g. Table 1's `{"feedback_steps": "outer:4"}`).

    Returns:
        The transformer, with the checkpoint's ILF attached.

    Raises:
        CheckpointError: the JSON is missing or corrupted, the weights file is unreadable or differs from the
            sha256 its JSON records (naming the file), or the checkpoint does not fit this backbone.
        ILFConfigError: an override names a field other than those three, or has a value not allowed.
        AlreadyAttachedError: another method (the cache, a peer) is attached.
        UnsupportedModelError: the target is not a supported transformer or pipeline.

    Example:
        ```py
        pipe = ilf.load_pipeline("pixart-alpha-512", torch_dtype=torch.float16, device="cuda")
        ilf.load_feedback(pipe, "runs/pixart/final", config_overrides={"feedback_steps": "outer:4"})
        image = pipe("a red fox in the snow", num_inference_steps=10).images[0]  # 332 block forwards
        ```
    """
    model, _ = resolve_target(target)
    directory = Path(directory)
    meta = read_feedback_config(directory)
    cfg_dict = dict(meta["feedback_config"])
    for key, value in (config_overrides or {}).items():
        if key not in ("feedback_steps", "t_post", "ratio"):
            raise ILFConfigError(key, value, "an inference-time field: feedback_steps, t_post or ratio")
        cfg_dict[key] = value
    config = FeedbackConfig.from_dict(cfg_dict)
    _check_compatible(model, meta, directory)
    weights = checkpoint_files(directory)[0]
    tensors = _read_weights(weights, meta.get("weights_sha256"))
    shape = scale_shape(config, adapter_for(model))
    if "scales" not in tensors or tuple(tensors["scales"].shape) != shape:
        raise CheckpointError(f"{weights}: 'scales' missing or not of shape {shape}")
    block_sd = {k[len("feedback."):]: v for k, v in tensors.items() if k.startswith("feedback.")}
    block_e = unwrap_module(model_blocks(model)[config.loop_end])
    expected = plain_names(block_e, block_e.state_dict())  # F's names: no LoRA tensors
    if set(block_sd) != set(expected) or any(block_sd[k].shape != expected[k].shape for k in expected):
        raise CheckpointError(f"{weights}: feedback block tensors do not match block {config.loop_end} of the model")
    state = get_attachment(model)
    if state is not None and getattr(state.method, "feedback", None) is None:
        raise AlreadyAttachedError(f"{type(model).__name__} has {state.method.name} attached; call ilf.remove first")
    scheduler_ref = state.scheduler_ref if state is not None else None
    if state is not None:
        remove(model)
    apply_feedback(target, config)
    if scheduler_ref is not None and target is model:
        get_attachment(model).scheduler_ref = scheduler_ref  # keep following the scheduler it followed
    method = get_attachment(model).method
    method.feedback.load_state_dict({k: v.to(expected[k].dtype) for k, v in block_sd.items()})  # the backbone's dtype
    with torch.no_grad():
        method.scales.copy_(tensors["scales"].float())  # scales stay float32
    return model
