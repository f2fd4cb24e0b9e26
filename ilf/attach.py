"""Attach ILF or the cache to an unmodified diffusers transformer or pipeline, and detach it again.

Like diffusers' own hooks (`apply_first_block_cache`), a method is attached to a model, not forked
from it: the transformer keeps its class and identity, gains an instance-level `forward` that runs
the method through the backbone's adapter, and (for ILF) two registered members, `ilf_feedback`
(one extra block) and `ilf_scales` (one float32 scale per loop block, zero-initialised).
`remove()` deletes all of it and restores every `requires_grad` flag: the model is the original.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from .backbones import adapter_for
from .cache import CacheMethod
from .config import CacheConfig, FeedbackConfig
from .context import step_context
from .errors import AlreadyAttachedError, ILFConfigError, UnsupportedModelError
from .feedback import FeedbackMethod, make_feedback_block

STATE_ATTR = "_ilf_attachment"
FEEDBACK_BLOCK = "ilf_feedback"
FEEDBACK_SCALES = "ilf_scales"


@dataclass
class Attachment:
    """Per-model state of an attached method (kept on the transformer until `remove`)."""

    method: Any  # FeedbackMethod | CacheMethod | any object with __call__(adapter, model, prep, ctx) and start_run(ctx)
    adapter: Any
    scheduler_ref: Any = None  # () -> scheduler or None
    requires_grad: dict[str, bool] = field(default_factory=dict)  # backbone flags before attaching
    bypass_depth: int = 0
    ctx_cache: dict = field(default_factory=dict)

    def scheduler(self) -> Any:
        return self.scheduler_ref() if self.scheduler_ref is not None else None

    @property
    def config(self) -> Any:
        return self.method.config


def resolve_target(target: Any) -> tuple[nn.Module, Any]:
    """(transformer, pipeline or None) for a supported transformer or a pipeline holding one."""
    if isinstance(target, nn.Module):
        adapter_for(target)
        return target, None
    transformer = getattr(target, "transformer", None)
    if isinstance(transformer, nn.Module) and hasattr(target, "scheduler"):
        adapter_for(transformer)
        return transformer, target
    raise UnsupportedModelError(
        f"target={type(target).__name__} is not supported: expected a PixArtTransformer2DModel, a "
        "DiTTransformer2DModel, or a pipeline with `.transformer` and `.scheduler` (PixArtAlphaPipeline, "
        "PixArtSigmaPipeline, DiTPipeline)")


def get_attachment(target: Any) -> Attachment | None:
    """The attached method's state, or None."""
    model, _ = resolve_target(target)
    return model.__dict__.get(STATE_ATTR)


def _scheduler_ref(pipeline: Any, scheduler: Any):
    if scheduler is not None:
        return lambda: scheduler
    if pipeline is not None:
        ref = weakref.ref(pipeline)  # follow `pipe.scheduler`, even if the user swaps it later
        return lambda: getattr(ref(), "scheduler", None)
    return None


def _attached_forward(self: nn.Module, *args: Any, **kwargs: Any):
    """Instance-level forward installed by `apply_*`: the method's forward, or the stock one when bypassed."""
    state: Attachment = self.__dict__[STATE_ATTR]
    if state.bypass_depth > 0:
        return type(self).forward(self, *args, **kwargs)
    prep = state.adapter.prepare(self, *args, **kwargs)
    ctx = step_context(state.scheduler(), prep.timestep, state.ctx_cache)
    if ctx is not None and ctx.step_index == 0:
        state.method.start_run(ctx)  # per-call state never leaks from one sampling run into the next
    return state.method(state.adapter, self, prep, ctx)


def _install(model: nn.Module, state: Attachment) -> None:
    model.__dict__[STATE_ATTR] = state
    model.forward = _attached_forward.__get__(model, type(model))


def _check_free(model: nn.Module) -> None:
    if "_ilf_peer" in model.__dict__:
        raise AlreadyAttachedError(f"{type(model).__name__} already has the peer {model.__dict__['_ilf_peer'].name} "
                                   "attached; call ilf.remove(target) before applying another method")
    existing = model.__dict__.get(STATE_ATTR)
    if existing is not None:
        raise AlreadyAttachedError(
            f"{type(model).__name__} already has {existing.method.name} attached ({existing.config}); "
            "call ilf.remove(target) before applying another method")


def _as_config(config: Any, cls: type) -> Any:
    """The config as `cls`: None -> defaults, a dict -> `cls.from_dict`, anything else -> a clear error."""
    if config is None:
        return cls()
    if isinstance(config, dict):
        return cls.from_dict(config)
    if not isinstance(config, cls):
        raise ILFConfigError("config", type(config).__name__, f"a {cls.__name__} (or a dict of its fields)")
    return config


def apply_feedback(target: Any, config: FeedbackConfig | None = None, scheduler: Any = None) -> nn.Module:
    """Attach Inner Loop Feedback (paper Sec. 3) to a transformer or stock pipeline; returns the transformer.

    Adds `ilf_feedback` (a copy of block e, trainable) and `ilf_scales` (float32 zeros, shape (m,));
    freezes every backbone parameter. In a pipeline call, feedback follows `config.feedback_steps` and
    `config.t_post` using the pipeline's (or the given) scheduler; a direct call runs feedback with t_post = t.
    """
    config = _as_config(config, FeedbackConfig)
    model, pipeline = resolve_target(target)
    _check_free(model)
    num_blocks = len(model.transformer_blocks)
    config.validate(num_blocks)
    method = FeedbackMethod(config, num_blocks)
    block = make_feedback_block(model, config)
    ref_param = next(model.transformer_blocks[config.loop_end].parameters())
    scales = nn.Parameter(torch.zeros(config.loop_size, dtype=torch.float32, device=ref_param.device))  # s_i = 0
    state = Attachment(method, adapter_for(model), _scheduler_ref(pipeline, scheduler),
                       {n: p.requires_grad for n, p in model.named_parameters()})
    model.requires_grad_(False)  # the backbone is frozen; only F and the scales learn
    model.add_module(FEEDBACK_BLOCK, block)
    model.register_parameter(FEEDBACK_SCALES, scales)
    _install(model, state)
    return model


def apply_cache(target: Any, config: CacheConfig | None = None, scheduler: Any = None) -> nn.Module:
    """Attach the caching baseline (paper Sec. 2.2) to a transformer or stock pipeline; returns the transformer.

    Without a scheduler (a bare transformer), every call counts as the next step since attaching or `reset`.
    """
    config = _as_config(config, CacheConfig)
    model, pipeline = resolve_target(target)
    _check_free(model)
    config.validate(len(model.transformer_blocks))
    state = Attachment(CacheMethod(config, len(model.transformer_blocks)), adapter_for(model),
                       _scheduler_ref(pipeline, scheduler))
    _install(model, state)
    return model


def attach_method(target: Any, method: Any, scheduler: Any = None) -> nn.Module:
    """Attach any method object (`__call__(adapter, model, prep, ctx)`, `start_run(ctx)`, `name`, `config`).

    The extension point for methods of one's own (the library peers attach with `ilf.peers.apply_peer`).
    """
    model, pipeline = resolve_target(target)
    _check_free(model)
    _install(model, Attachment(method, adapter_for(model), _scheduler_ref(pipeline, scheduler)))
    return model


def remove(target: Any) -> nn.Module:
    """Detach whichever method is attached; the model is then exactly the original. No-op if none is."""
    model, _ = resolve_target(target)
    if "_ilf_peer" in model.__dict__:  # a peer method (ilf.peers): its own exact undo
        from .peers import remove_peer

        return remove_peer(model)
    state: Attachment | None = model.__dict__.pop(STATE_ATTR, None)
    if state is None:
        return model
    model.__dict__.pop("forward", None)
    if FEEDBACK_BLOCK in model._modules:
        del model._modules[FEEDBACK_BLOCK]
    if FEEDBACK_SCALES in model._parameters:
        del model._parameters[FEEDBACK_SCALES]
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    return model


def reset(target: Any) -> None:
    """Forget per-run state (cache residuals, step counter) of the attached method."""
    state = get_attachment(target)
    if state is not None and hasattr(state.method, "reset"):
        state.method.reset()


@contextmanager
def bypass(target: Any) -> Iterator[nn.Module]:
    """Run the plain backbone (stock forward) inside the block, e.g. for the distillation teacher."""
    model, _ = resolve_target(target)
    state: Attachment | None = model.__dict__.get(STATE_ATTR)
    if state is None:
        yield model
        return
    state.bypass_depth += 1
    try:
        yield model
    finally:
        state.bypass_depth -= 1


def feedback_parameters(target: Any) -> list[nn.Parameter]:
    """The trainable parameters of attached ILF: the feedback block's, then the scales."""
    model, _ = resolve_target(target)
    if FEEDBACK_BLOCK not in model._modules:
        raise ILFConfigError("target", type(model).__name__, "a model with ILF attached (call apply_feedback first)")
    return list(model._modules[FEEDBACK_BLOCK].parameters()) + [model._parameters[FEEDBACK_SCALES]]
