"""Training configuration (paper Sec. 3.2 and 4.1; METHOD.md "Training"): one dataclass, YAML in, validated.

A training YAML (configs/train/<name>.yaml) names the backbone, the inner loop, the data, the
distillation mode and the optimisation settings. `load_train_config(path, overrides)` reads it,
applies dotted `key=value` overrides (`optim.lr=1e-5`, `data.latents_dir=/scratch/lat`) and validates
every field, raising `ILFConfigError` naming the field, the value and what is allowed.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import FeedbackConfig
from ..config_file import TRAINING_FIELDS, Shown, file_error, read_config
from ..errors import ILFConfigError

DISTILL_MODES = ("fast", "standard", "none")
OBJECTIVES = ("auto", "epsilon", "flow")
TIMESTEP_SAMPLING = ("uniform", "logit-normal")
DATA_SOURCES = ("captions", "classes", "toy-shapes", "toy-digits", "videos")
MIXED_PRECISION = ("auto", "bf16", "no")
FROZEN_STORAGE = ("float32", "bfloat16")
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
TOY_BACKBONES = ("toy-t2i", "toy-c2i", "toy-flux")


@dataclass
class DataConfig:
    """Where the training pairs come from and where their precomputed latents live."""

    source: str = "captions"  # captions (image + caption JSONL folder) | classes (ImageNet-style folder) | toy-shapes | toy-digits | videos (clip + caption JSONL folder)
    path: str | None = None  # the image folder (captions/classes) or clip folder (videos); unused for toy sources
    latents_dir: str | None = None  # output of `ilf precompute`, read by `ilf train`
    num_samples: int | None = None  # toy-shapes: how many scenes; others: optional cap on the pairs used
    seed: int = 0  # toy-shapes: scene seed
    resolution: int | None = None  # image side in pixels (videos: the frame height); None = the backbone's native resolution
    width: int | None = None  # videos: frame width in pixels; None = the backbone's (Wan 2.1 480p: 832)
    num_frames: int | None = None  # videos: frames per clip, 4k + 1; None = the backbone's (Wan 2.1: 81)
    frame_stride: int = 1  # videos: take every frame_stride-th frame of a clip, from its first
    shard_size: int = 1024  # samples per safetensors shard
    storage_dtype: str = "float32"  # dtype of stored latents and caption embeddings
    max_sequence_length: int | None = None  # caption tokens; None = the pipeline's default (alpha 120, sigma 300)
    clean_caption: bool = False  # PixArt's caption cleaning (needs bs4 + ftfy)
    batch_size: int = 32  # precompute batch size (VAE / text encoder)
    num_workers: int = 0  # DataLoader workers (training and precompute image decoding)

    def validate(self) -> "DataConfig":
        if self.source not in DATA_SOURCES:
            raise ILFConfigError("data.source", self.source, DATA_SOURCES)
        if self.source in ("captions", "classes", "videos") and not self.path:
            what = "a clip folder" if self.source == "videos" else "an image folder"
            raise ILFConfigError("data.path", self.path, f"{what} (required for data.source={self.source!r})")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ILFConfigError("data.storage_dtype", self.storage_dtype, STORAGE_DTYPES)
        for name in ("shard_size", "batch_size", "frame_stride"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ILFConfigError(f"data.{name}", v, "an integer >= 1")
        if self.num_samples is not None and (not isinstance(self.num_samples, int) or self.num_samples < 1):
            raise ILFConfigError("data.num_samples", self.num_samples, "null or an integer >= 1")
        for name in ("width", "num_frames"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ILFConfigError(f"data.{name}", v, "null or an integer >= 1")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ILFConfigError("data.num_workers", self.num_workers, "an integer >= 0")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ILFConfigError("data.seed", self.seed, "an integer in [0, 2**32)")
        return self


@dataclass
class OptimConfig:
    """AdamW on the feedback block and the scales (the only trainable parameters)."""

    lr: float = 1e-6  # paper: 1e-6 text-to-image, 5e-6 class-to-image
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_scheduler: str = "constant"  # a diffusers.optimization scheduler name
    warmup_iterations: int = 0
    max_grad_norm: float | None = None  # gradient clipping; None = off (the paper tunes no such knob)

    def validate(self) -> "OptimConfig":
        for name in ("lr", "weight_decay", "eps", "max_grad_norm"):
            setattr(self, name, _number(getattr(self, name)))
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ILFConfigError("optim.lr", self.lr, "a float > 0")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ILFConfigError("optim.weight_decay", self.weight_decay, "a float >= 0")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ILFConfigError("optim.betas", self.betas, "two floats in [0, 1)")
        self.betas = tuple(float(b) for b in self.betas)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ILFConfigError("optim.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if not isinstance(self.warmup_iterations, int) or self.warmup_iterations < 0:
            raise ILFConfigError("optim.warmup_iterations", self.warmup_iterations, "an integer >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ILFConfigError("optim.max_grad_norm", self.max_grad_norm, "null or a float > 0")
        return self


# Fields that must not change between a checkpoint and the run resuming from it (else the resumed run is another run).
RESUME_CRITICAL = ("backbone", "feedback", "distill", "teacher_steps", "global_batch_size", "cond_dropout", "seed",
                   "optim", "data.latents_dir", "train_t_post", "train_t_post_steps", "objective", "timestep_sampling",
                   "logit_mean", "logit_std", "guidance")
# What a checkpoint written before a field existed trained with (`check_resumable` fills these in).
RESUME_DEFAULTS = {"train_t_post": "t", "train_t_post_steps": None, "objective": "auto", "timestep_sampling": "uniform",
                   "logit_mean": 0.0, "logit_std": 1.0, "guidance": 3.5}
TRAIN_T_POST = ("t", "inference")


@dataclass
class TrainConfig:
    """One training run of the feedback module (paper Sec. 3.2, 4.1)."""

    name: str = "run"
    backbone: str = "pixart-alpha-512"  # registry name, "toy-t2i" / "toy-c2i" / "toy-flux", or a local pipeline folder
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)  # loop b..e and init; inference fields are stored
    distill: str = "fast"  # fast (one teacher forward at t//2) | standard (K DPM-Solver++ steps) | none
    teacher_steps: int = 8  # K for distill=standard
    objective: str = "auto"  # auto (flow for FLUX/SD3/Qwen-Image/Sana, else epsilon) | epsilon | flow
    timestep_sampling: str = "uniform"  # flow: uniform over the scheduler's T training sigmas | logit-normal (SD3)
    logit_mean: float = 0.0  # timestep_sampling=logit-normal: u = sigmoid(logit_mean + logit_std * n), n ~ N(0, 1)
    logit_std: float = 1.0
    guidance: float = 3.5  # guidance-embedded backbones (FLUX.1-dev): the embedded guidance, as FluxPipeline's default
    train_t_post: str = "t"  # blocks after F in training: at t (METHOD.md) | at the inference t_post (ilf.train.t_post)
    train_t_post_steps: int | None = None  # inference step count whose t_post `inference` follows (required then)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    global_batch_size: int = 2048  # samples per optimizer step, over all ranks (gradient accumulation fills it)
    micro_batch_size: int = 16  # samples per forward on one rank
    iterations: int | None = None  # optimizer steps; exactly one of iterations / epochs
    epochs: float | None = None  # passes over the data (converted to iterations, rounded up)
    cond_dropout: float = 0.1  # share of samples trained with the backbone's null condition (CFG's uncond branch)
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | no
    gradient_checkpointing: bool = False  # recompute block activations in backward (less memory, ~1.3x time)
    # the frozen backbone's weights in memory: float32, or bfloat16 storage upcast layer by layer to float32 when it
    # runs (diffusers' layerwise casting; half the memory: a 20B Qwen-Image fits an 80 GB GPU); F and the scales
    # stay float32 and are what trains either way
    frozen_storage_dtype: str = "float32"
    checkpoint_interval: int = 500  # iterations between checkpoints
    keep_iterations: list[int] = field(default_factory=list)  # checkpoints never deleted (Fig. 7's x-axis)
    keep_last: int = 1  # most recent checkpoints kept besides keep_iterations
    log_interval: int = 10  # iterations between train_log.jsonl records (the first and last are always logged)
    seed: int = 0
    device: str = "auto"  # auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda

    def validate(self) -> "TrainConfig":
        self.cond_dropout, self.epochs = _number(self.cond_dropout), _number(self.epochs)
        self.logit_mean, self.logit_std, self.guidance = map(_number, (self.logit_mean, self.logit_std, self.guidance))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ILFConfigError("backbone", self.backbone, "a registry name, 'toy-t2i'/'toy-c2i'/'toy-flux' or a local folder")
        if self.distill not in DISTILL_MODES:
            raise ILFConfigError("distill", self.distill, DISTILL_MODES)
        if self.objective not in OBJECTIVES:
            raise ILFConfigError("objective", self.objective, OBJECTIVES)
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ILFConfigError("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        for name in ("logit_mean", "logit_std", "guidance"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ILFConfigError(name, v, "a finite number")
        if not self.logit_std > 0:
            raise ILFConfigError("logit_std", self.logit_std, "a number > 0")
        if self.train_t_post not in TRAIN_T_POST:
            raise ILFConfigError("train_t_post", self.train_t_post, TRAIN_T_POST)
        if self.train_t_post == "inference" and (not isinstance(self.train_t_post_steps, int)
                                                 or isinstance(self.train_t_post_steps, bool) or self.train_t_post_steps < 1):
            raise ILFConfigError("train_t_post_steps", self.train_t_post_steps,
                                 "the inference step count (an integer >= 1) whose t_post train_t_post=inference uses")
        for name in ("teacher_steps", "global_batch_size", "micro_batch_size", "checkpoint_interval", "log_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ILFConfigError(name, v, "an integer >= 1")
        if (self.iterations is None) == (self.epochs is None):
            raise ILFConfigError("iterations", self.iterations, f"exactly one of iterations / epochs (epochs={self.epochs})")
        if self.iterations is not None and (not isinstance(self.iterations, int) or self.iterations < 1):
            raise ILFConfigError("iterations", self.iterations, "an integer >= 1")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ILFConfigError("epochs", self.epochs, "a number > 0")
        if not isinstance(self.cond_dropout, (int, float)) or not 0 <= self.cond_dropout <= 1:
            raise ILFConfigError("cond_dropout", self.cond_dropout, "a float in [0, 1]")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ILFConfigError("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.frozen_storage_dtype not in FROZEN_STORAGE:
            raise ILFConfigError("frozen_storage_dtype", self.frozen_storage_dtype, FROZEN_STORAGE)
        if not isinstance(self.keep_iterations, list) or not all(isinstance(i, int) and i >= 1 for i in self.keep_iterations):
            raise ILFConfigError("keep_iterations", self.keep_iterations, "a list of iteration numbers >= 1")
        if not isinstance(self.keep_last, int) or self.keep_last < 1:
            raise ILFConfigError("keep_last", self.keep_last, "an integer >= 1 (the checkpoint to resume from)")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ILFConfigError("device", self.device, "auto, cpu, cuda or cuda:<index>")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ILFConfigError("seed", self.seed, "an integer in [0, 2**32)")
        self.feedback.validate()
        self.data.validate()
        self.optim.validate()
        return self

    def total_iterations(self, num_samples: int) -> int:
        """Optimizer steps of the run: `iterations`, or ceil(epochs * samples / global batch)."""
        if self.iterations is not None:
            return self.iterations
        return max(1, math.ceil(self.epochs * num_samples / self.global_batch_size))

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step; the global batch must split evenly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ILFConfigError("global_batch_size", self.global_batch_size,
                                 f"a multiple of micro_batch_size x world_size = {self.micro_batch_size} x {world_size}"
                                 f" = {per_step} (change micro_batch_size or the number of processes)")
        return self.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feedback"] = self.feedback.to_dict()
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        _check_fields(d, cls, "")
        sub = {"data": DataConfig, "optim": OptimConfig}
        for key, sub_cls in sub.items():
            value = {} if d.get(key) is None else d[key]
            if not isinstance(value, dict):
                raise ILFConfigError(key, Shown(value), "a mapping of fields")
            _check_fields(value, sub_cls, key + ".")
            d[key] = sub_cls(**value)
        fb = {} if d.get("feedback") is None else d["feedback"]
        if not isinstance(fb, dict):
            raise ILFConfigError("feedback", Shown(fb), "a mapping of FeedbackConfig fields")
        try:
            d["feedback"] = FeedbackConfig.from_dict(fb)
        except ILFConfigError as err:
            raise ILFConfigError(f"feedback.{err.field}", err.value, err.allowed) from None
        return cls(**d).validate()


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-6` (no dot) as a string; accept it as the float it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_fields(d: dict[str, Any], cls: type, prefix: str) -> None:
    """Every key is a field of `cls` and every value has the field's type (ranges are `validate`'s)."""
    hints = typing.get_type_hints(cls)
    unknown = sorted((k for k in d if k not in hints), key=str)
    if unknown:
        raise ILFConfigError(prefix + str(unknown[0]), Shown(d[unknown[0]]), f"a known field: {sorted(hints)}")
    for key, value in d.items():
        if not _fits(value, hints[key]):
            raise ILFConfigError(prefix + key, Shown(value), _describe(hints[key]))


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation (a number written `1e-6` fits float; a config class: any)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(_number(value), (int, float)) and not isinstance(value, bool)
    if hint in _TYPE_NAMES:
        return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_fits, value, args))
    return True  # a nested config (feedback, data, optim): checked by its own class


def _describe(hint: Any) -> str:
    """A field's annotation in words: `int | None` -> "an integer or null", `list[int]` -> "a list of integers"."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        return f"a list of {_TYPE_NAMES.get(args[0], 'value')}s"
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} {_TYPE_NAMES.get(args[0], 'value')}s"
    name = _TYPE_NAMES.get(hint, "mapping")
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["optim.lr=1e-5", "iterations=100"]` -> {"optim.lr": 1e-5, "iterations": 100} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ILFConfigError("--set", item, "KEY=VALUE with a dotted key, e.g. optim.lr=1e-5")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); sections are created as needed."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return d


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a training YAML, apply dotted overrides, validate. Relative data paths stay relative to the cwd.

    Args:
        path: the training YAML (`configs/train/<name>.yaml`).
        overrides: dotted keys -> values (`{"optim.lr": 1e-5}`, `ilf train --set`), applied over the file's.

    Returns:
        The validated config; `name` defaults to the file's stem.

    Raises:
        FileNotFoundError: there is no such file.
        ConfigFileError: the file is not valid YAML, not a mapping, or one of its fields is not allowed; one line
            naming the file, the field and its line and column.
        ILFConfigError: a value given in `overrides` is not allowed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such training config (ready ones: configs/train/*.yaml)")
    raw = read_config(path, TRAINING_FIELDS)
    raw.setdefault("name", path.stem)
    overrides = overrides or {}
    try:
        return TrainConfig.from_dict(apply_overrides(raw, overrides))
    except ILFConfigError as err:
        if any(err.field == k or err.field.startswith(k + ".") for k in overrides):
            raise  # the value came from an override, not from the file
        raise file_error(path, err) from None


def flat_items(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1} (for comparing configs field by field)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
