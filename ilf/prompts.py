"""Prompt sets by name: what a row generates from (contract D's `prompts`).

Each set is an ordered list of `PromptItem(prompt_id, prompt, class_label)`; a row takes its first
`num_prompts` items and `images_per_prompt` samples of each, so image index = position in that
expansion (independent of how the work is sharded).

- `imagereward-benchmark`: the 100 prompts of ImageReward's official benchmark (id from the file);
- `mjhq-30k`: the MJHQ-30K prompts (id = MJHQ image id), used for MJHQ FID and CLIP score;
- `imagenet-classes`: the 1,000 ImageNet class labels (DiT; no text);
- `toy-captions`: captions of the toy shape grammar, from a fixed seed (`TOY_CAPTION_SEED`);
- `toy-digits`: the ten digit classes.
The real sets are read from the ILF cache by `ilf.metrics.prompts` (fetched by `ilf prefetch`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import ILFConfigError

TOY_CAPTION_SEED = 20240  # the toy caption prompt set is the same list on every machine and in every config
TOY_CAPTION_POOL = 1000  # size of the toy caption set (rows take a prefix)


@dataclass(frozen=True)
class PromptItem:
    """One conditioning input: text (t2i) or a class label (c2i)."""

    prompt_id: str
    prompt: str | None = None
    class_label: int | None = None


def _from_metrics(kind: str) -> list[PromptItem]:
    from .metrics import prompts as mp  # lazy: the metrics stack is heavy and may be absent on CPU-only checks

    fn = getattr(mp, f"load_{kind}_prompts")
    out = []
    for item in fn():
        if isinstance(item, dict):
            out.append(PromptItem(str(item.get("id", item.get("prompt_id"))), item["prompt"]))
        elif isinstance(item, (tuple, list)):
            out.append(PromptItem(str(item[0]), str(item[1])))
        else:
            out.append(PromptItem(str(getattr(item, "prompt_id", getattr(item, "id", ""))), str(item.prompt)))
    return out


def _imagereward() -> list[PromptItem]:
    return _from_metrics("imagereward")


def _mjhq() -> list[PromptItem]:
    return _from_metrics("mjhq")


def _imagenet() -> list[PromptItem]:
    return [PromptItem(f"class{c:04d}", None, c) for c in range(1000)]


def _toy_captions() -> list[PromptItem]:
    from .toy.data import toy_prompts

    return [PromptItem(f"toy{i:05d}", p) for i, p in enumerate(toy_prompts(TOY_CAPTION_POOL, TOY_CAPTION_SEED))]


def _toy_digits() -> list[PromptItem]:
    return [PromptItem(f"digit{c}", None, c) for c in range(10)]


PROMPT_SETS: dict[str, Callable[[], list[PromptItem]]] = {
    "imagereward-benchmark": _imagereward,
    "mjhq-30k": _mjhq,
    "imagenet-classes": _imagenet,
    "toy-captions": _toy_captions,
    "toy-digits": _toy_digits,
}
TASK_OF_SET: dict[str, str] = {"imagereward-benchmark": "t2i", "mjhq-30k": "t2i", "imagenet-classes": "c2i",
                               "toy-captions": "t2i", "toy-digits": "c2i"}


def load_prompt_set(name: str, num_prompts: int | None = None) -> list[PromptItem]:
    """The first `num_prompts` items (all when None) of a named prompt set."""
    if name not in PROMPT_SETS:
        raise ILFConfigError("prompts", name, sorted(PROMPT_SETS))
    items = PROMPT_SETS[name]()
    if num_prompts is not None:
        if num_prompts < 1 or num_prompts > len(items):
            raise ILFConfigError("num_prompts", num_prompts, f"1..{len(items)} (the size of prompt set {name!r})")
        items = items[:num_prompts]
    return items
