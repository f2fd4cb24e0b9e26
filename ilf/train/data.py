"""Training data: source image datasets (for precompute) and the precomputed-latent shard dataset (for training).

Sources (`data.source`):
  captions    a folder with `captions.jsonl` (or HF-style `metadata.jsonl`), one record per image:
              {"image": "relative/path.jpg", "caption": "..."} (`file_name`/`text` are accepted too)
  classes     an ImageNet-style folder: one sub-folder per class; labels = sorted folder names' order
  toy-shapes  the toy world's rendered shape scenes with captions (ilf.toy.data)
  toy-digits  scikit-learn's digits, labels 0..9 (ilf.toy.data)
  videos      a folder with `captions.jsonl`, one record per clip (text-to-video Wan; ilf.train.video)

Training reads `<latents_dir>` (written by `ilf precompute`): `meta.json`, `shard_XXXXX.safetensors` and, for
text-to-image and text-to-video, `null_condition.safetensors` (the empty caption's embedding: the null condition
guidance uses).
Sample order and per-sample randomness are pure functions of (seed, stream position), so a run resumed at
any iteration, or run on any number of ranks, sees the same global batches with the same noise.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import safe_open

from ..errors import ILFConfigError, MissingLatentsError
from .config import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
META_NAME = "meta.json"
NULL_NAME = "null_condition.safetensors"
FORMAT = "ilf-latents"
TEXT_TASKS = ("t2i", "t2v")  # caption-conditioned: prompt embeddings in the shards and a null condition


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


# ---------------------------------------------------------------- sources (precompute input)

def _load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB image, resized on the short side and centre-cropped to `resolution`, as (3, H, W) in [-1, 1]."""
    with Image.open(path) as im:
        im = ImageOps.fit(im.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def _array_to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0


_EXAMPLE_PATH = {"image": "relative/path.jpg", "video": "relative/path.mp4"}


def read_caption_index(path: Path, kind: str) -> tuple[list[Path], list[str], Path]:
    """The records of a caption dataset: `path` is a folder holding `captions.jsonl` (or HF-style
    `metadata.jsonl`), or that file; one JSON line per item, {kind: "relative/path", "caption": "..."}
    (`file_name` / `path` and `text` are accepted too).

    Args:
        path: the folder (or the .jsonl file).
        kind: "image" (the `captions` source) or "video" (the `videos` source): the record key and the words of
            the errors.

    Returns:
        (item paths under the folder, captions, the index file), in the index's order.
    """
    if path.is_file() and path.suffix == ".jsonl":
        index, root = path, path.parent
    else:
        if not path.is_dir():
            name, items = ("the caption dataset", "the images") if kind == "image" else \
                ("the video-caption dataset", "the clips")
            raise FileNotFoundError(f"data.path={str(path)!r} does not exist: {name} is your own; point data.path "
                                    f"at a folder holding captions.jsonl and {items}")
        root = path
        index = next((path / n for n in ("captions.jsonl", "metadata.jsonl") if (path / n).is_file()), None)
        if index is None:
            raise FileNotFoundError(f"data.path={str(path)!r} has no captions.jsonl (or metadata.jsonl): one JSON "
                                    f'line per {kind}, {{"{kind}": "{_EXAMPLE_PATH[kind]}", "caption": "..."}}')
    paths, captions = [], []
    for i, line in enumerate(index.read_text().splitlines()):
        if not line.strip():
            continue
        rec = json.loads(line)
        item = rec.get(kind) or rec.get("file_name") or rec.get("path")
        cap = rec.get("caption", rec.get("text"))
        if item is None or cap is None:
            raise ValueError(f"{index}:{i + 1}: a record needs '{kind}' (or 'file_name') and 'caption' (or 'text')")
        paths.append(root / item)
        captions.append(str(cap))
    return paths, captions, index


class SourceDataset(torch.utils.data.Dataset):
    """Pixels + caption (t2i) or class label (c2i) of every training pair, in a fixed order."""

    def __init__(self, cfg: DataConfig, resolution: int):
        self.cfg, self.resolution = cfg, resolution
        self.images: np.ndarray | None = None
        self.paths: list[Path] = []
        self.captions: list[str] | None = None
        self.labels: list[int] | None = None
        self.classes: list[str] | None = None
        if cfg.source == "captions":
            self._read_captions(Path(cfg.path))
        elif cfg.source == "classes":
            self._read_classes(Path(cfg.path))
        elif cfg.source == "toy-shapes":
            from ..toy.data import make_shapes_dataset

            self.images, self.captions, _ = make_shapes_dataset(cfg.num_samples or 4096, cfg.seed, resolution)
        else:  # toy-digits
            from ..toy.data import load_digits_dataset

            self.images, labels = load_digits_dataset(resolution)
            self.labels = [int(x) for x in labels]
        n = len(self)
        if cfg.num_samples is not None and cfg.source != "toy-shapes" and n > cfg.num_samples:
            self._truncate(cfg.num_samples)
        if len(self) == 0:
            raise ValueError(f"data.path={cfg.path!r}: the {cfg.source} dataset is empty (no images found)")

    @property
    def task(self) -> str:
        return "t2i" if self.captions is not None else "c2i"

    def _read_captions(self, folder: Path) -> None:
        self.paths, self.captions, index = read_caption_index(folder, "image")
        missing = [p for p in self.paths[:1000] if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) named in {index} do not exist, e.g. {missing[0]}")

    def _read_classes(self, folder: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"data.path={str(folder)!r} does not exist: the class-folder dataset is your own; "
                                    "point data.path at an ImageNet-style folder (one sub-folder of images per class)")
        self.classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        self.labels = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            self.paths += files
            self.labels += [label] * len(files)

    def _truncate(self, n: int) -> None:
        self.paths = self.paths[:n]
        if self.images is not None:
            self.images = self.images[:n]
        if self.captions is not None:
            self.captions = self.captions[:n]
        if self.labels is not None:
            self.labels = self.labels[:n]

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels = (_array_to_tensor(self.images[i]) if self.images is not None
                  else _load_image(self.paths[i], self.resolution))
        out: dict[str, Any] = {"pixels": pixels, "index": i}
        if self.captions is not None:
            out["caption"] = self.captions[i]
        else:
            out["class_label"] = self.labels[i]
        return out


# ---------------------------------------------------------------- precomputed latents (training input)

def read_meta(latents_dir: str | Path) -> dict[str, Any]:
    """The latent folder's meta.json, with a clear error if the folder or the file is missing or broken."""
    root = Path(latents_dir)
    if not root.is_dir():
        raise MissingLatentsError("precomputed latents", str(root))
    path = root / META_NAME
    if not path.is_file():
        raise MissingLatentsError(f"{META_NAME} of the precomputed latents", str(root))
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupted ({err}); re-run ilf precompute") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ILF latent folder (format={meta.get('format')!r}, expected {FORMAT!r})")
    return meta


class LatentShards:
    """Random access to the samples of a precomputed latent folder (memory-mapped safetensors shards)."""

    def __init__(self, latents_dir: str | Path, max_open: int = 32):
        self.root = Path(latents_dir)
        self.meta = read_meta(self.root)
        self.task = self.meta["task"]
        self.num_samples = int(self.meta["num_samples"])
        self.shard_size = int(self.meta["shard_size"])
        if self.num_samples == 0:
            raise ValueError(f"latents_dir={str(self.root)!r} holds an empty dataset (num_samples=0)")
        self.num_shards = -(-self.num_samples // self.shard_size)
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._max_open = max_open
        self.null: dict[str, torch.Tensor] | None = None
        self.pooled = self.meta.get("pooled_dim") is not None  # FLUX/SD3: a pooled prompt embedding per sample
        self._check_shards()
        if self.task in TEXT_TASKS:
            null_path = self.root / NULL_NAME
            if not null_path.is_file():
                raise MissingLatentsError(f"the null condition ({NULL_NAME}) of the precomputed latents",
                                          str(self.root))
            from safetensors.torch import load_file

            self.null = load_file(str(null_path))

    def _check_shards(self) -> None:
        """Every shard present, readable, with the sample count and shapes meta.json promises."""
        shape_of_one = list(self.meta["latent_shape"])  # (C, H, W); video (C, F, H, W)
        for k in range(self.num_shards):
            path = self.root / shard_name(k)
            want = min(self.shard_size, self.num_samples - k * self.shard_size)
            if not path.is_file():
                raise MissingLatentsError(f"latent shard {path.name}", str(self.root), resumes=True)
            try:
                with safe_open(str(path), framework="pt") as f:
                    shape = list(f.get_slice("latents").get_shape())
                    keys = set(f.keys())
            except Exception as err:  # safetensors raises several types for a damaged header
                raise ValueError(f"latent shard {path} is corrupted ({err}); delete it and re-run ilf precompute, "
                                 "which re-encodes only missing shards") from None
            if shape != [want, *shape_of_one]:
                raise ValueError(f"latent shard {path} has latents of shape {shape}, expected {[want, *shape_of_one]} "
                                 f"(meta.json); re-run ilf precompute into an empty folder")
            need = {"prompt_embeds", "prompt_attention_mask"} if self.task in TEXT_TASKS else {"class_labels"}
            if self.pooled:
                need.add("pooled_prompt_embeds")
            if not need <= keys:
                raise ValueError(f"latent shard {path} lacks {sorted(need - keys)} for task {self.task}")

    def _shard(self, k: int):
        f = self._open.get(k)
        if f is None:
            f = safe_open(str(self.root / shard_name(k)), framework="pt")
            self._open[k] = f
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(k)
        return f

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen shards themselves
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, j = divmod(int(i), self.shard_size)
        f = self._shard(k)
        out = {"latents": f.get_slice("latents")[j:j + 1][0].float()}
        if self.task in TEXT_TASKS:
            mask = f.get_slice("prompt_attention_mask")[j:j + 1][0]
            length = max(int(mask.sum()), 1)
            out["prompt_embeds"] = f.get_slice("prompt_embeds")[j:j + 1, :length][0].float()
            out["prompt_attention_mask"] = mask[:length].long()
            if self.pooled:
                out["pooled_prompt_embeds"] = f.get_slice("pooled_prompt_embeds")[j:j + 1][0].float()
        else:
            out["class_label"] = f.get_slice("class_labels")[j:j + 1][0].long()
        return out


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


class TrainStream(torch.utils.data.Dataset):
    """Item p of the endless training stream: a sample of epoch p // n, with its noise, timestep and dropout.

    The order is a fresh permutation per epoch; noise eps, timestep t ~ U{0..T-1} (or `timestep_sampler(g)`,
    e.g. the flow objective's logit-normal index) and the condition-dropout coin are drawn from a generator
    seeded by (seed, p). Nothing depends on rank, worker or resume point.
    """

    def __init__(self, shards: LatentShards, seed: int, num_train_timesteps: int, cond_dropout: float,
                 null_label: int | None = None,
                 timestep_sampler: Callable[[torch.Generator], torch.Tensor] | None = None):
        self.shards, self.seed, self.T, self.p_drop, self.null_label = shards, seed, num_train_timesteps, cond_dropout, null_label
        self.timestep_sampler = timestep_sampler
        self._perm: dict[int, torch.Tensor] = {}

    def order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(_seed(self.seed, epoch, 0x5EED))
            self._perm = {epoch: torch.randperm(len(self.shards), generator=g)}
        return self._perm[epoch]

    def __len__(self) -> int:  # positions are unbounded; the sampler decides which are read
        return 2 ** 62

    def __getitem__(self, p: int) -> dict[str, Any]:
        n = len(self.shards)
        epoch, pos = divmod(int(p), n)
        item = self.shards[int(self.order(epoch)[pos])]
        g = torch.Generator().manual_seed(_seed(self.seed, p))
        item["timestep"] = (torch.randint(0, self.T, (), generator=g) if self.timestep_sampler is None
                            else self.timestep_sampler(g))
        drop = bool(torch.rand((), generator=g) < self.p_drop)
        item["noise"] = torch.randn(item["latents"].shape, generator=g)
        item["dropped"] = drop
        if drop:
            if self.shards.task in TEXT_TASKS:
                item["prompt_embeds"] = self.shards.null["prompt_embeds"][0].float()
                item["prompt_attention_mask"] = self.shards.null["prompt_attention_mask"][0].long()
                if self.shards.pooled:
                    item["pooled_prompt_embeds"] = self.shards.null["pooled_prompt_embeds"][0].float()
            else:
                item["class_label"] = torch.tensor(self.null_label, dtype=torch.long)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a micro-batch; caption embeddings are right-padded to the longest (masked positions are ignored)."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("latents", "noise", "timestep")}
    out["dropped"] = torch.tensor([it["dropped"] for it in items])
    if "prompt_embeds" in items[0]:
        length = max(it["prompt_embeds"].shape[0] for it in items)
        dim = items[0]["prompt_embeds"].shape[1]
        emb = torch.zeros(len(items), length, dim)
        mask = torch.zeros(len(items), length, dtype=torch.long)
        for i, it in enumerate(items):
            n = it["prompt_embeds"].shape[0]
            emb[i, :n], mask[i, :n] = it["prompt_embeds"], it["prompt_attention_mask"]
        out["prompt_embeds"], out["prompt_attention_mask"] = emb, mask
        if "pooled_prompt_embeds" in items[0]:
            out["pooled_prompt_embeds"] = torch.stack([it["pooled_prompt_embeds"] for it in items])
    else:
        out["class_labels"] = torch.stack([it["class_label"] for it in items])
    return out


class MicroBatchSampler(torch.utils.data.Sampler):
    """Stream positions of this rank's micro-batches, iteration by iteration, from `start_iteration`.

    Global batch i is positions [i*G, (i+1)*G); rank r takes the r-th of `world_size` equal slices and
    splits it into `accumulation` micro-batches.
    """

    def __init__(self, start_iteration: int, total_iterations: int, global_batch: int, rank: int, world_size: int,
                 accumulation: int):
        self.start, self.total, self.G = start_iteration, total_iterations, global_batch
        self.rank, self.world, self.acc = rank, world_size, accumulation
        self.per_rank = global_batch // world_size
        self.micro = self.per_rank // accumulation

    def __len__(self) -> int:
        return (self.total - self.start) * self.acc

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.total):
            base = it * self.G + self.rank * self.per_rank
            for a in range(self.acc):
                yield list(range(base + a * self.micro, base + (a + 1) * self.micro))


def check_fits(meta: dict[str, Any], transformer: torch.nn.Module, task: str, latents_dir: str | Path) -> None:
    """Raise ValueError if the precomputed latents cannot feed this backbone (checked before any step)."""
    from .backbone import caption_dim, latent_channels, latent_multiple, pooled_dim
    from .video import check_video_fits, is_video_model

    if is_video_model(transformer) or len(meta["latent_shape"]) == 4:
        return check_video_fits(meta, transformer, task, latents_dir)
    c, h, w = meta["latent_shape"]
    cfg = transformer.config
    problems = []
    if meta["task"] != task:
        problems.append(f"task {meta['task']!r} but the backbone is {task!r}")
    if c != latent_channels(transformer):
        problems.append(f"{c} latent channels but the backbone takes {latent_channels(transformer)} "
                        f"(in_channels={cfg.in_channels})")
    multiple = latent_multiple(transformer)
    if multiple is not None:  # flow matching: any size the patching divides (FLUX/Qwen-Image pack 2x2, SD3 patches 2x2)
        if h % multiple or w % multiple:
            need = "even latent sides" if multiple == 2 else f"latent sides divisible by {multiple}"
            problems.append(f"latents of {h}x{w}, but {type(transformer).__name__} needs {need}")
    elif (h, w) != (cfg.sample_size, cfg.sample_size):
        problems.append(f"latents of {h}x{w} but the backbone's sample_size is {cfg.sample_size}x{cfg.sample_size}")
    if task == "t2i" and meta.get("caption_dim") != caption_dim(transformer):
        problems.append(f"caption embeddings of dim {meta.get('caption_dim')} but the backbone reads "
                        f"{caption_dim(transformer)}")
    if task == "t2i" and meta.get("pooled_dim") != pooled_dim(transformer):
        problems.append(f"pooled prompt embeddings of dim {meta.get('pooled_dim')} but the backbone reads "
                        f"{pooled_dim(transformer)}")
    if task == "c2i" and meta.get("num_classes", 0) > cfg.num_embeds_ada_norm:
        problems.append(f"{meta.get('num_classes')} classes but the backbone embeds {cfg.num_embeds_ada_norm}")
    if problems:
        raise ILFConfigError("data.latents_dir", str(latents_dir),
                             "latents made for this backbone (" + "; ".join(problems) + "); re-run ilf precompute "
                             "with this training config")
