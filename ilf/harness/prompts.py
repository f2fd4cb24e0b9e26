"""Prompt sets by name: what a row generates from (the workflow config's `prompts`).

Each set is an ordered list of `PromptItem(prompt_id, prompt, class_label)`; a row takes its first
`num_prompts` items and `images_per_prompt` samples of each, so image index = position in that
expansion (independent of how the work is sharded).

- `imagereward-benchmark`: the 100 prompts of ImageReward's official benchmark (id from the file);
- `mjhq-30k`: the MJHQ-30K prompts (id = MJHQ image id), used for MJHQ FID and CLIP score;
- `drawbench`: the 200 DrawBench prompts of Imagen (id = `drawbench-NNN`, the position in the source file), the
  prompt set the acceleration literature reports ImageReward, CLIP score and the fidelity metrics on;
- `imagenet-classes`: the 1,000 ImageNet class labels (DiT; no text);
- `vbench-overall-consistency`: 93 text-to-video prompts, VBench's "overall consistency" dimension (Huang et al.,
  "VBench: Comprehensive Benchmark Suite for Video Generative Models", CVPR 2024), shipped in
  `ilf/data/vbench_overall_consistency.txt`, a copy of `prompts/prompts_per_dimension/overall_consistency.txt` of
  github.com/Vchitect/VBench (commit 2a3bd13bf2870e119527a8ebb351ae4d1c250339; Apache License 2.0); id =
  `vbench-oc-NNN`, the line in that file (from 0);
- `toy-captions`: captions of the toy shape grammar, from a fixed seed (`TOY_CAPTION_SEED`);
- `toy-digits`: the ten digit classes.
The real sets are read from the ILF cache by `ilf.metrics.prompts` (fetched by `ilf prefetch`); a
`num_prompts` below 30,000 takes MJHQ's seeded random subset (the same for every row), other sets a prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ILFConfigError

TOY_CAPTION_SEED = 20240  # the toy caption prompt set is the same list on every machine and in every config
TOY_CAPTION_POOL = 1000  # size of the toy caption set (rows take a prefix)


@dataclass(frozen=True)
class PromptItem:
    """One conditioning input: text (t2i, t2v) or a class label (c2i)."""

    prompt_id: str
    prompt: str | None = None
    class_label: int | None = None


def _imagereward(num: int | None = None) -> list[PromptItem]:
    from ..metrics.prompts import imagereward_prompts  # lazy: the metrics stack is heavy

    items = [PromptItem(d["id"], d["prompt"]) for d in imagereward_prompts()]
    return items[:num] if num is not None else items


def _mjhq(num: int | None = None) -> list[PromptItem]:
    from ..metrics.prompts import mjhq_prompts

    # a seeded random subset (kept in id order) when num < 30,000: the same subset for every row
    return [PromptItem(d["id"], d["prompt"]) for d in mjhq_prompts(num=num, seed=0)]


def _drawbench(num: int | None = None) -> list[PromptItem]:
    from ..metrics.prompts import drawbench_prompts

    items = [PromptItem(d["id"], d["prompt"]) for d in drawbench_prompts()]
    return items[:num] if num is not None else items


def _imagenet(num: int | None = None) -> list[PromptItem]:
    return [PromptItem(f"class{c:04d}", None, c) for c in range(1000)][:num]


VBENCH_FILE = "vbench_overall_consistency.txt"


def _vbench_overall_consistency(num: int | None = None) -> list[PromptItem]:
    from importlib.resources import files

    lines = files("ilf").joinpath("data", VBENCH_FILE).read_text(encoding="utf-8").splitlines()
    return [PromptItem(f"vbench-oc-{i:03d}", p) for i, p in enumerate(lines)][:num]


def _toy_captions(num: int | None = None) -> list[PromptItem]:
    from ..toy.data import toy_prompts

    pool = toy_prompts(TOY_CAPTION_POOL, TOY_CAPTION_SEED)  # the first k of a seed do not depend on the pool size
    return [PromptItem(f"toy{i:05d}", p) for i, p in enumerate(pool)][:num]


def _toy_digits(num: int | None = None) -> list[PromptItem]:
    return [PromptItem(f"digit{c}", None, c) for c in range(10)][:num]


PROMPT_SETS: dict[str, Callable[[int | None], list[PromptItem]]] = {
    "imagereward-benchmark": _imagereward,
    "mjhq-30k": _mjhq,
    "drawbench": _drawbench,
    "imagenet-classes": _imagenet,
    "vbench-overall-consistency": _vbench_overall_consistency,
    "toy-captions": _toy_captions,
    "toy-digits": _toy_digits,
}
TASK_OF_SET: dict[str, str] = {"imagereward-benchmark": "t2i", "mjhq-30k": "t2i", "drawbench": "t2i",
                               "imagenet-classes": "c2i", "vbench-overall-consistency": "t2v",
                               "toy-captions": "t2i", "toy-digits": "c2i"}


def load_prompt_set(name: str, num_prompts: int | None = None) -> list[PromptItem]:
    """The first `num_prompts` items (all when None) of a named prompt set."""
    if name not in PROMPT_SETS:
        raise ILFConfigError("prompts", name, sorted(PROMPT_SETS))
    if num_prompts is not None and (not isinstance(num_prompts, int) or num_prompts < 1):
        raise ILFConfigError("num_prompts", num_prompts, "null (the whole set) or an integer >= 1")
    items = PROMPT_SETS[name](num_prompts)
    if num_prompts is not None and len(items) < num_prompts:
        raise ILFConfigError("num_prompts", num_prompts, f"at most {len(items)} (the size of prompt set {name!r})")
    return items
