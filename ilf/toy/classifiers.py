"""Small CNN classifiers behind the toy metrics (toy FID, toy adherence, toy class accuracy).

One network per toy task, trained on real toy images only, shipped as safetensors + JSON in
`ilf/toy/assets/classifiers/` and recreated deterministically on CPU by

    ilf toy train-classifiers --task t2i      # shapes: heads shape, color, size, position, count
    ilf toy train-classifiers --task c2i      # sklearn digits: head digit

(or `python -c "from pathlib import Path; from ilf.toy.classifiers import train_classifiers;
train_classifiers(Path('ilf/toy/assets/classifiers'), 'c2i')"`).

The penultimate layer (`ToyClassifier.features`, 64-d, before its ReLU) is the feature space of the toy FID,
the role Inception-v3's pool3 plays for the paper's FID (paper Sec. 4, "Metrics"); the heads
are the toy stand-in for CLIP score (shapes) and a class-accuracy check (digits). Each JSON
config stores the held-out accuracy of every head so readers know how far to trust them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ilf.errors import CheckpointError, MissingAssetError
from ilf.io import atomic_path, sha256_file, write_json_atomic
from ilf.harness.provenance import provenance
from ilf.toy.tasks import TASKS, check_task  # noqa: F401  (TASKS: re-exported beside the classifiers)

DATASETS = {"t2i": "shapes", "c2i": "digits"}  # toy dataset behind each task
ATTRIBUTES = ("shape", "color", "size", "position", "count")  # t2i heads, in caption-grammar order
DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "classifiers"  # shipped weights + stats
DIR_ENV = "ILF_TOY_CLASSIFIERS"  # set to use classifiers trained elsewhere (e.g. another seed)
RECREATE_COMMAND = "ilf toy train-classifiers --task {task} --out ilf/toy/assets/classifiers"

# Data splits are fixed (they do not follow `seed`) so that the held-out images, and hence the
# toy FID reference statistics, are the same whatever seed trains the classifier.
SHAPES_TRAIN_SEED = 1_000  # + seed
SHAPES_HELDOUT_SEED = 7_777_777
DIGITS_SPLIT_SEED = 0
DIGITS_HELDOUT_FRACTION = 0.4


@dataclass
class TrainSettings:
    """Training recipe per task (CPU, one thread, a few minutes)."""

    n_train: int  # training images (t2i: rendered scenes; c2i: taken from the digits split)
    n_heldout: int  # held-out images: accuracy and toy FID reference statistics
    epochs: int
    batch_size: int = 64
    lr: float = 2e-3
    noise_std: float = 0.08  # max std of additive pixel noise (in [0, 1] units), robustness to samples
    max_blur: float = 0.5  # max weight of a 3x3 box blur mixed into each training image
    max_shift: int = 0  # random translation in pixels (0 for shapes: position is a label)


SETTINGS = {
    "t2i": TrainSettings(n_train=10_000, n_heldout=2_000, epochs=12, max_blur=0.25),
    "c2i": TrainSettings(n_train=0, n_heldout=0, epochs=40, max_shift=2),  # sizes follow the digits split
}


@dataclass
class ClassifierConfig:
    """Architecture + label vocabulary; stored as the JSON beside the weights."""

    task: str
    resolution: int
    heads: dict[str, list[str]]  # head name -> class names (as strings)
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # one stage per entry, each halves H, W
    feature_dim: int = 64  # penultimate width = toy FID feature dimension


class ToyClassifier(nn.Module):
    """Conv stages -> flatten (keeps position information) -> 64-d features -> one linear head per attribute."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        side = config.resolution // 2 ** len(config.channels)
        self.proj = nn.Linear(c_in * side * side, config.feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(config.feature_dim, len(v)) for k, v in config.heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B, feature_dim) toy FID features: the penultimate layer before its
        ReLU (pre-activation, so no unit is dead on real data and the reference covariance has full rank)."""
        h = self.trunk(x * 2.0 - 1.0)  # (B, C, H/8, W/8)
        return self.proj(h.flatten(1))  # (B, D)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = F.relu(self.features(x))
        return {k: head(f) for k, head in self.heads.items()}


def classifier_dir() -> Path:
    """Where the toy classifiers are read from: `$ILF_TOY_CLASSIFIERS`, else the shipped assets."""
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def weights_path(task: str, directory: Path | None = None) -> Path:
    return Path(directory or classifier_dir()) / f"toy_{check_task(task)}_classifier.safetensors"


def config_path(task: str, directory: Path | None = None) -> Path:
    return Path(directory or classifier_dir()) / f"toy_{check_task(task)}_classifier.json"


class MissingToyClassifierError(MissingAssetError):
    """A shipped toy-classifier file is missing: it is recreated locally, not downloaded."""

    def __init__(self, path: Path, task: str):
        self.item, self.location = f"toy {task} classifier file {path.name}", str(path.parent)
        self.fetch_command = RECREATE_COMMAND.format(task=task)
        FileNotFoundError.__init__(
            self, f"toy metric classifier file {path} does not exist. It ships with the repository; "
                  f"recreate it (deterministic, a few minutes on CPU) with `{self.fetch_command}` from the "
                  f"repository root, or point ${DIR_ENV} at a folder that holds it.")


@lru_cache(maxsize=8)
def _load_cached(task: str, directory: str) -> tuple[ToyClassifier, dict[str, Any]]:
    from safetensors.torch import load_file

    wpath, cpath = weights_path(task, Path(directory)), config_path(task, Path(directory))
    for p in (cpath, wpath):
        if not p.is_file():
            raise MissingToyClassifierError(p, task)
    meta = json.loads(cpath.read_text())
    if meta.get("weights_sha256") and sha256_file(wpath) != meta["weights_sha256"]:
        raise CheckpointError(f"toy metric classifier file {wpath} does not match the weights_sha256 recorded in "
                              f"{cpath}: it is damaged or from another run; recreate both with "
                              f"`{RECREATE_COMMAND.format(task=task)}` from the repository root")
    model = ToyClassifier(ClassifierConfig(**meta["config"]))
    model.load_state_dict(load_file(str(wpath)))
    model.eval().requires_grad_(False)
    return model, meta


def load_classifier(task: str, directory: Path | None = None) -> ToyClassifier:
    """The shipped toy classifier for `task` (cached, eval mode, frozen)."""
    return _load_cached(check_task(task), str(Path(directory or classifier_dir()).resolve()))[0]


def classifier_metadata(task: str, directory: Path | None = None) -> dict[str, Any]:
    """The JSON beside the weights: config, held-out accuracies, weights sha256, provenance."""
    return _load_cached(check_task(task), str(Path(directory or classifier_dir()).resolve()))[1]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 or float-in-[0,255] (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2) / 255.0


@torch.no_grad()
def predict(model: ToyClassifier, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Arg-max class index per head for (N, H, W, 3) images in [0, 255]."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in model.config.heads}
    for i in range(0, len(images), batch_size):
        logits = model(to_tensor(images[i:i + batch_size]))
        for k, v in logits.items():
            out[k].append(v.argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


# --- data ----------------------------------------------------------------------------------------

def _vocab() -> dict[str, list[str]]:
    """Class names of the five shapes heads, from the toy data's vocabulary tuples."""
    from ilf.toy import data

    vocab = (data.SHAPES, data.COLORS, data.SIZES, data.POSITIONS, data.COUNTS)
    return {a: [str(v) for v in values] for a, values in zip(ATTRIBUTES, vocab)}


def attribute_labels(attributes: list[dict[str, Any]], heads: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Attribute dicts (as from `make_shapes_dataset` / `parse_caption`) -> class index per head."""
    return {k: np.array([names.index(str(a[k])) for a in attributes], dtype=np.int64) for k, names in heads.items()}


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(train_images, train_labels, heldout_images, heldout_labels, resolution): fixed stratified split."""
    from ilf.toy.data import load_digits_dataset

    images, labels = load_digits_dataset()
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held[idx[: int(round(DIGITS_HELDOUT_FRACTION * len(idx)))]] = True
    return images[~held], labels[~held], images[held], labels[held], int(images.shape[1])


def heldout_images(task: str, n: int | None = None) -> np.ndarray:
    """Real held-out toy images (never seen in classifier training): the toy FID reference set."""
    if check_task(task) == "t2i":
        from ilf.toy.data import make_shapes_dataset

        return make_shapes_dataset(n or SETTINGS["t2i"].n_heldout, SHAPES_HELDOUT_SEED)[0]
    images = digits_split()[2]
    if n is not None and n > len(images):
        raise ValueError(f"n={n} is not allowed: the digits held-out split has {len(images)} images")
    return images[:n] if n else images


def _task_data(task: str, seed: int, settings: TrainSettings):
    """(train_x uint8, train_y dict, held_x, held_y, heads, resolution)."""
    if task == "t2i":
        from ilf.toy.data import make_shapes_dataset

        heads = _vocab()
        tx, _, tattr = make_shapes_dataset(settings.n_train, SHAPES_TRAIN_SEED + seed)
        hx, _, hattr = make_shapes_dataset(settings.n_heldout, SHAPES_HELDOUT_SEED)
        return tx, attribute_labels(tattr, heads), hx, attribute_labels(hattr, heads), heads, int(tx.shape[1])
    tx, ty, hx, hy, res = digits_split()
    if settings.n_train:
        tx, ty = tx[: settings.n_train], ty[: settings.n_train]
    if settings.n_heldout:
        hx, hy = hx[: settings.n_heldout], hy[: settings.n_heldout]
    return tx, {"digit": ty}, hx, {"digit": hy}, {"digit": [str(d) for d in range(10)]}, res


def _augment(x: torch.Tensor, gen: torch.Generator, s: TrainSettings) -> torch.Tensor:
    """Random translation (digits only), mild blur and additive Gaussian noise of random strength:
    generated samples are slightly soft or noisy, the classifier should not be brittle to that."""
    if s.max_shift:
        pad = s.max_shift
        xp = F.pad(x, (pad, pad, pad, pad))
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
        x = xp[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    blur = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = x + torch.rand(x.shape[0], 1, 1, 1, generator=gen) * s.max_blur * (blur - x)
    std = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * s.noise_std
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)


# --- training ------------------------------------------------------------------------------------

def train_classifiers(out_dir: Path, task: str, seed: int = 0, settings: TrainSettings | None = None,
                      make_reference: bool = True) -> dict[str, Any]:
    """Train the toy classifier for `task` on CPU, deterministically; write weights, JSON and toy FID stats.

    Returns the JSON record (config, held-out accuracy per head, timings, files). `settings`
    overrides the recipe (tests use a tiny one); `make_reference=False` skips the toy FID
    reference statistics.
    """
    check_task(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bitwise-reproducible reductions (and polite on shared machines)
    try:
        return _train(Path(out_dir), task, seed, settings or SETTINGS[task], make_reference)
    finally:
        torch.set_num_threads(threads)


def _train(out_dir: Path, task: str, seed: int, s: TrainSettings, make_reference: bool) -> dict[str, Any]:
    from safetensors.torch import save_file
    from tqdm import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tx, ty, hx, hy, heads, res = _task_data(task, seed, s)
    t_data = time.perf_counter() - t0

    model = ToyClassifier(ClassifierConfig(task=task, resolution=res, heads=heads))
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=1e-4)
    steps_per_epoch = (len(tx) + s.batch_size - 1) // s.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.epochs * steps_per_epoch)
    x_all = to_tensor(tx)
    y_all = {k: torch.from_numpy(v) for k, v in ty.items()}
    model.train()
    for _ in tqdm(range(s.epochs), desc=f"toy {task} classifier", leave=False):
        order = torch.randperm(len(tx), generator=gen)
        for i in range(0, len(tx), s.batch_size):
            idx = order[i:i + s.batch_size]
            logits = model(_augment(x_all[idx], gen, s))
            loss = sum(F.cross_entropy(logits[k], y_all[k][idx]) for k in heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval().requires_grad_(False)
    t_train = time.perf_counter() - t0 - t_data

    pred = predict(model, hx)
    accuracy = {k: float((pred[k] == hy[k]).mean()) for k in heads}
    if task == "t2i":
        accuracy["all_attributes"] = float(np.mean([np.mean([pred[k][i] == hy[k][i] for k in heads])
                                                    for i in range(len(hx))]))
    wpath, cpath = weights_path(task, out_dir), config_path(task, out_dir)
    with atomic_path(wpath) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"toy_classifier": f"{task} seed={seed}"})  # one key: byte-stable header
    record: dict[str, Any] = {
        "name": f"toy {task} classifier ({DATASETS[task]})",
        "config": asdict(model.config),
        "train_settings": asdict(s),
        "seed": seed,
        "n_train": int(len(tx)),
        "n_heldout": int(len(hx)),
        "heldout_accuracy": accuracy,
        "weights_sha256": sha256_file(wpath),
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
        "recreate_command": RECREATE_COMMAND.format(task=task),
        "provenance": provenance({"task": task, "seed": seed, "settings": asdict(s)}, "cpu"),
    }
    write_json_atomic(cpath, record)
    _load_cached.cache_clear()
    if make_reference:
        from ilf.toy.metrics import make_reference_stats

        t1 = time.perf_counter()
        ref = make_reference_stats(task, directory=out_dir, images=hx, classifiers=out_dir)
        record["reference"] = ref.name
        record["seconds"]["reference"] = round(time.perf_counter() - t1, 1)
        write_json_atomic(cpath, record)
        _load_cached.cache_clear()
    return record
