"""Block-forward accounting, analytic and measured (paper Sec. 4.2; METHOD.md "Block-forward accounting").

A block forward is one call of a block module (the backbone's blocks and the feedback block).
Per generated image; classifier-free guidance batches cond/uncond in one call and does not double it.

    baseline  N*S
    cache     N*S - c*(S - ceil(S/k))
    ILF       N*S + (m+1)*|feedback steps|
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from .config import CacheConfig, FeedbackConfig, cached_block_indices
from .errors import ILFConfigError
from .schedule import resolve_feedback_steps

if TYPE_CHECKING:  # torch is imported where a model is counted: the analytic side is read by the workflow
    from torch import nn


def expected_block_forwards(config: FeedbackConfig | CacheConfig | None, num_blocks: int, num_steps: int) -> int:
    """Analytic block forwards per generated image for a plain backbone, ILF or the cache (paper Sec. 4.2).

    baseline N*S; cache N*S - c*(S - ceil(S/k)); ILF N*S + (m+1)*|feedback steps| (METHOD.md "Block-forward
    accounting"). Classifier-free guidance batches cond/uncond in one call and does not double it.

    Args:
        config: None (the plain backbone), a `FeedbackConfig`, a `CacheConfig`, or any config with its own
            `expected_block_forwards(num_blocks, num_steps)` (the peers').
        num_blocks: N, the backbone's depth.
        num_steps: S, the sampling steps.

    Returns:
        The block forwards per image (a peer's config may return `"dynamic"`: counted at run time only).

    Raises:
        ILFConfigError: N or S is not an integer >= 1, the config does not fit N, or its type is unknown.

    Example:
        ```py
        from ilf import CacheConfig, FeedbackConfig, expected_block_forwards

        expected_block_forwards(FeedbackConfig(8, 19, "outer:4"), 28, 10)  # 332 = 280 + 13 * 4 (Table 1)
        expected_block_forwards(CacheConfig("inner", 18, 3), 28, 20)  # 326 = 560 - 18 * 13
        ```
    """
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ILFConfigError("num_blocks", num_blocks, "an integer >= 1")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ILFConfigError("num_steps", num_steps, "an integer >= 1")
    n, s = num_blocks, num_steps
    if config is None:
        return n * s
    if isinstance(config, FeedbackConfig):
        config.validate(n)
        return n * s + (config.loop_size + 1) * len(resolve_feedback_steps(config.feedback_steps, s))
    if isinstance(config, CacheConfig):
        c = len(cached_block_indices(config, n))
        return n * s - c * (s - math.ceil(s / config.interval))
    analytic = getattr(config, "expected_block_forwards", None)
    if callable(analytic):  # methods beyond the paper may define their own (or return "dynamic")
        return analytic(num_blocks, num_steps)
    raise ILFConfigError("config", type(config).__name__, "None, a FeedbackConfig or a CacheConfig")


@dataclass
class BlockForwardCounter:
    """Counts block-module calls while active (what `count_block_forwards` yields).

    Args:
        count (`int`, defaults to 0): block forwards counted so far (per image for one pipeline call).
        per_block (`dict[str, int]`): the same by module name, `"transformer_blocks.<i>"` and `"ilf_feedback"`.

    Example:
        ```py
        with ilf.count_block_forwards(pipe) as counter:
            pipe("a red fox", num_inference_steps=10)
        counter.count, counter.per_block["transformer_blocks.0"]  # e.g. (280, 10) for a plain 28-block backbone
        ```
    """

    count: int = 0
    per_block: dict[str, int] = field(default_factory=dict)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.count += 1
            self.per_block[name] = self.per_block.get(name, 0) + 1
        return hook

    def reset(self) -> None:
        self.count = 0
        self.per_block = {}


def block_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module whose call is a block forward: B_0 .. B_{N-1} by module name (`transformer_blocks.<i>`,
    FLUX's `single_transformer_blocks.<i>`, ...) and the feedback block."""
    from .adapters import named_blocks
    from .attach import get_attachment

    mods = dict(named_blocks(model))
    state = get_attachment(model)  # ILF's feedback block is owned by the method, not registered
    feedback = getattr(state.method, "feedback", None) if state is not None else None
    if feedback is not None:
        mods["ilf_feedback"] = feedback
    return mods


def _compute_start(name: str, block: nn.Module) -> nn.Module:
    """The module whose call marks that a block really computes: its first layer (`_FIRST_LAYERS`).

    Cache hooks in the diffusers style (FirstBlockCache, MagCache, TaylorSeer) replace a block's `forward` and
    return a cached output without computing, yet the block's `__call__` (and a forward hook on it) still runs;
    its first layer runs only when the block computes. A hook on the block itself would count every cached call
    as computed, so a block without a known first layer is refused rather than counted there.

    Raises:
        UnsupportedModelError: the block has none of the `_FIRST_LAYERS`.
    """
    from torch import nn

    from .errors import UnsupportedModelError

    for layer in _FIRST_LAYERS:
        first = getattr(block, layer, None)
        if isinstance(first, nn.Module):
            return first
    raise UnsupportedModelError(f"cannot count the block forwards of {name} ({type(block).__name__}): it has none "
                                f"of the first layers {', '.join(_FIRST_LAYERS)} whose call marks a computed block")


# A block's first layer, by the names diffusers' block classes give it: `norm1` (PixArt / DiT `BasicTransformerBlock`,
# FLUX's double-stream, SD3, Sana, Wan blocks), `norm` (FLUX's single-stream block), `img_norm1`
# (`QwenImageTransformerBlock`: its image stream's first norm; it has no `norm1`).
_FIRST_LAYERS = ("norm1", "norm", "img_norm1")


@contextmanager
def count_block_forwards(target: Any) -> Iterator[BlockForwardCounter]:
    """Measure block forwards at run time with forward hooks on every block module (paper Sec. 4.2).

    Counts the block calls that computed: at each block's first layer, so a hook that short-circuits a block
    (a peer's cache) is not counted; ILF's feedback block counts. One call processes the whole batch, so for one
    pipeline call this is the per-image count, to compare with `expected_block_forwards`. The hooks are removed
    on exit.

    Args:
        target: a transformer or a stock pipeline holding one, with or without a method attached.

    Returns:
        A context manager yielding the `BlockForwardCounter`.

    Raises:
        UnsupportedModelError: the target is not a supported transformer or pipeline, or one of its blocks has no
            known first layer (`_FIRST_LAYERS`).

    Example:
        ```py
        ilf.apply_feedback(pipe, ilf.FeedbackConfig(8, 19, "outer:4"))
        with ilf.count_block_forwards(pipe) as counter:
            pipe("a red fox in the snow", num_inference_steps=10)
        assert counter.count == ilf.expected_block_forwards(ilf.FeedbackConfig(8, 19, "outer:4"), 28, 10)
        ```
    """
    from .attach import resolve_target

    model, _ = resolve_target(target)
    counter = BlockForwardCounter()
    handles = [_compute_start(name, m).register_forward_hook(counter._hook(name))
               for name, m in block_modules(model).items()]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


# Stock pipelines whose guidance runs as a second transformer call per step (cond, then uncond), not as a
# doubled batch: pipeline class -> (the argument whose value > 1 turns it on, whether it also needs a negative
# prompt). Wan: `do_classifier_free_guidance = guidance_scale > 1`; FLUX.1 and Qwen-Image: "true CFG",
# `true_cfg_scale > 1` and a negative prompt (or its embeddings) given (diffusers' pipelines).
GUIDANCE_AS_TWO_CALLS: dict[str, tuple[str, bool]] = {
    "WanPipeline": ("guidance_scale", False),
    "WanImageToVideoPipeline": ("guidance_scale", False),
    "FluxPipeline": ("true_cfg_scale", True),
    "QwenImagePipeline": ("true_cfg_scale", True),
}


def calls_per_step(pipeline: Any, **call_kwargs: Any) -> int:
    """Transformer calls per sampling step of a stock pipeline called with `call_kwargs` (its guidance mode).

    Batched classifier-free guidance (PixArt, DiT, SD3, Sana) is one call per step; guidance as two calls per step
    (`GUIDANCE_AS_TWO_CALLS`: Wan, true CFG of FLUX.1 and Qwen-Image) is two, so a pipeline call's block forwards
    are `calls_per_step x expected_block_forwards` (METHOD.md "Block-forward accounting"). Arguments not given
    take the pipeline's own defaults (read from its `__call__` signature).

    Args:
        pipeline: a pipeline, a pipeline class or its diffusers class name (e.g. `"WanPipeline"`).
        **call_kwargs: the arguments of the pipeline call (`guidance_scale`, `true_cfg_scale`, `negative_prompt`,
            `negative_prompt_embeds`, ...); others are ignored.

    Returns:
        1 or 2.

    Raises:
        ILFConfigError: the guidance scale that decides it is not a number.

    Example:
        ```py
        calls_per_step("WanPipeline", guidance_scale=5.0)  # 2: a cond and an uncond call per step
        calls_per_step("QwenImagePipeline")  # 1: true CFG needs a negative prompt
        calls_per_step("PixArtAlphaPipeline", guidance_scale=4.5)  # 1: cond and uncond in one batch
        ```
    """
    import inspect

    if isinstance(pipeline, str):
        names = [pipeline]
    else:  # a subclass of a stock pipeline guides as its base does
        names = [c.__name__ for c in (pipeline if isinstance(pipeline, type) else type(pipeline)).__mro__]
    name = next((n for n in names if n in GUIDANCE_AS_TWO_CALLS), None)
    if name is None:
        return 1
    mode = GUIDANCE_AS_TWO_CALLS[name]
    scale_arg, needs_negative = mode
    negative = any(call_kwargs.get(k) is not None for k in ("negative_prompt", "negative_prompt_embeds"))
    if needs_negative and not negative:
        return 1
    scale = call_kwargs.get(scale_arg)
    if scale is None:
        if isinstance(pipeline, str):
            import diffusers

            pipeline = getattr(diffusers, name)
        scale = inspect.signature(pipeline.__call__).parameters[scale_arg].default
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ILFConfigError(scale_arg, scale, f"a number (the guidance scale of {name})")
    return 2 if scale > 1 else 1
