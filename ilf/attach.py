"""Attach ILF or the cache to an unmodified diffusers transformer or pipeline, and detach it again.

A method is a hook among diffusers' hooks (`diffusers.hooks.HookRegistry`, as `apply_first_block_cache`):

- `MethodHook`, a `ModelHook` named "ilf", re-runs the forward through the backbone's adapter. It is
  inserted innermost, in place of the stock forward, so model-level hooks applied before or after it
  (`apply_faster_cache`, custom `ModelHook`s) wrap it and keep working; block-level hooks run inside
  the loop because every block is called through its module. `remove` unlinks exactly this hook.
- The per-step host logic (which run and step, feedback on/off, t_post, recompute/reuse) runs in a
  forward pre-hook that `torch.compile` leaves out of the graph (`torch.compiler.disable`); the
  compiled forward only reads its result (`Attachment.plan`: bools, a slot and a 0-d t_post tensor),
  so a compiled transformer has no graph break and at most two graphs per method.
- Nothing is registered on the transformer: ILF's feedback block F and float32 scales are owned by
  the method (readable as `model.ilf_feedback` / `model.ilf_scales`, and by `feedback_parameters`),
  follow the backbone's device and compute dtype on use (in any grad mode, as normal tensors), and
  stay out of `state_dict`, `dtype` and `save_pretrained`. The backbone's parameters are frozen while
  ILF is attached; `remove` restores every `requires_grad` flag.

Stateful diffusers hooks inside `transformer_blocks` (caches such as first-block cache, pyramid attention
broadcast, FasterCache's attention part) assume one call per block per step; ILF calls the loop blocks
twice and the cache skips blocks, so that combination raises `AlreadyAttachedError` naming both.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.utils.torch_utils import unwrap_module
from torch import nn

from .backbones import adapter_for
from .cache import CacheMethod
from .config import CacheConfig, FeedbackConfig
from .context import RunTracker, StepContext
from .errors import AlreadyAttachedError, ILFConfigError, UnsupportedModelError
from .feedback import FeedbackMethod, compute_dtype, make_feedback_block

STATE_ATTR = "_ilf_attachment"
HOOK_NAME = "ilf"
FEEDBACK_BLOCK = "ilf_feedback"  # read-only alias of the feedback block on an attached transformer
FEEDBACK_SCALES = "ilf_scales"  # read-only alias of the scales
_ALIASES = (FEEDBACK_BLOCK, FEEDBACK_SCALES)


@dataclass
class Attachment:
    """Per-model state of an attached method (kept until `remove`)."""

    method: Any  # FeedbackMethod | CacheMethod | any object with __call__(adapter, model, prep, plan) and start_run(ctx)
    adapter: Any
    tracker: RunTracker
    requires_grad: dict[str, bool] = field(default_factory=dict)  # backbone flags before attaching
    bypass_depth: int = 0
    plan: Any = None  # what the host side decided for the current call (read, then cleared, by the forward)
    hook: Any = None
    handle: Any = None  # the forward pre-hook running the host side
    created_registry: bool = False

    @property
    def config(self) -> Any:
        return self.method.config

    @property
    def scheduler_ref(self) -> Any:
        return self.tracker.scheduler_ref

    @scheduler_ref.setter
    def scheduler_ref(self, ref: Any) -> None:
        self.tracker.scheduler_ref = ref
        self.tracker.reset()

    def scheduler(self) -> Any:
        return self.tracker.scheduler_ref() if self.tracker.scheduler_ref is not None else None

    @property
    def feedback(self) -> nn.Module | None:
        return getattr(self.method, "feedback", None)

    @feedback.setter
    def feedback(self, block: nn.Module) -> None:
        """Swap the feedback block (e.g. for a compiled copy); it is not registered on the transformer."""
        self.method.feedback = block
        self.method_owner.__dict__[FEEDBACK_BLOCK] = block

    method_owner: Any = None  # the transformer (for the aliases)


class MethodHook(ModelHook):
    """The attached method as a diffusers `ModelHook` (named "ilf"): runs the method instead of the stock forward."""

    _is_stateful = True

    def __init__(self, state: Attachment):
        super().__init__()
        self.state = state

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if state.bypass_depth > 0:  # the plain backbone (e.g. the distillation teacher)
            return self.fn_ref.original_forward(*args, **kwargs)
        plan = state.plan
        if plan is _UNSET:  # `forward` called directly, without `__call__` and its pre-hook
            plan = _host_plan(state, module, args, kwargs)
        state.plan = _UNSET  # each plan serves one call
        prep = state.adapter.prepare(module, *args, **kwargs)
        return state.method(state.adapter, module, prep, plan)

    def reset_state(self, module: nn.Module) -> nn.Module:
        """`HookRegistry.reset_stateful_hooks()` forgets per-run state like `ilf.reset`."""
        _reset_state(self.state)
        return module

    def __repr__(self) -> str:
        return f"MethodHook({self.state.method.name}: {self.state.config})"


def _unwrap(target: Any) -> Any:
    return unwrap_module(target) if isinstance(target, nn.Module) else target  # a torch.compile wrapper


def resolve_target(target: Any) -> tuple[nn.Module, Any]:
    """(transformer, pipeline or None) for a supported transformer or a pipeline holding one (compiled or not)."""
    if isinstance(target, nn.Module):
        model = _unwrap(target)
        adapter_for(model)
        return model, None
    transformer = getattr(target, "transformer", None)
    if isinstance(transformer, nn.Module) and hasattr(target, "scheduler"):
        model = _unwrap(transformer)
        adapter_for(model)
        return model, target
    raise UnsupportedModelError(
        f"target={type(target).__name__} is not supported: expected a PixArtTransformer2DModel, a "
        "DiTTransformer2DModel, or a pipeline with `.transformer` and `.scheduler` (PixArtAlphaPipeline, "
        "PixArtSigmaPipeline, DiTPipeline)")


def get_attachment(target: Any) -> Attachment | None:
    """The attached method's state, or None."""
    model, _ = resolve_target(target)
    return model.__dict__.get(STATE_ATTR)


def _method_label(method: Any) -> str:
    return {"feedback": "ILF (ilf.apply_feedback)", "cache": "the cache (ilf.apply_cache)"}.get(
        method.name, f"{method.name} (ilf.attach_method)")


def check_block_hooks(model: nn.Module, method: Any) -> None:
    """Raise `AlreadyAttachedError` if a stateful diffusers hook sits inside `transformer_blocks`."""
    for name, module in model.transformer_blocks.named_modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is None:
            continue
        for hook_name in registry._hook_order:
            hook = registry.hooks[hook_name]
            if getattr(hook, "_is_stateful", False):
                where = "transformer_blocks" + (f".{name}" if name else "")
                raise AlreadyAttachedError(
                    f"{_method_label(method)} cannot be combined with diffusers' {hook_name!r} hook "
                    f"({type(hook).__name__}) on {where}: that hook keeps per-step state that assumes one call "
                    f"per block per step, while {method.name} calls blocks a different number of times. Remove one "
                    "of them (ilf.remove(target) / HookRegistry.remove_hook).")


def _insert_innermost(model: nn.Module, hook: MethodHook) -> bool:
    """Register `hook` in the model's `HookRegistry` directly around the stock forward; True if the registry is new."""
    created = not hasattr(model, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(model)
    if HOOK_NAME in registry.hooks:
        raise AlreadyAttachedError(f"{type(model).__name__} already has a hook named {HOOK_NAME!r}")
    top = model.__dict__.pop("forward", None)
    hooks, order, refs = registry.hooks, registry._hook_order, registry._fn_refs
    registry.hooks, registry._hook_order, registry._fn_refs = {}, [], []
    try:
        registry.register_hook(hook, HOOK_NAME)  # diffusers wires our forward around the stock one
    finally:
        mine = model.__dict__.pop("forward")
        registry.hooks = {HOOK_NAME: hook, **hooks}
        registry._hook_order = [HOOK_NAME, *order]
        registry._fn_refs = [hook.fn_ref, *refs]
    if refs:  # the previously innermost hook now calls ours instead of the stock forward
        _link(refs[0], mine)
        model.forward = top
    else:
        model.forward = mine
    _invalidate(registry)
    return created


def _invalidate(registry: Any) -> None:
    invalidate = getattr(registry, "invalidate_child_registries_cache", None)  # diffusers >= 0.42
    if invalidate is not None:
        invalidate()


def _link(fn_ref: Any, below: Any) -> None:
    if fn_ref.original_forward is not None:  # a hook with `new_forward` calls `original_forward`
        fn_ref.original_forward = below
    else:
        fn_ref.forward = below


def _unlink(model: nn.Module, created: bool) -> None:
    registry = model.__dict__.get("_diffusers_hook")
    if registry is None or HOOK_NAME not in registry.hooks:
        return
    index = registry._hook_order.index(HOOK_NAME)
    mine = registry._fn_refs[index]
    below = mine.original_forward if mine.original_forward is not None else mine.forward
    if index == len(registry._hook_order) - 1:
        model.forward = below
    else:
        _link(registry._fn_refs[index + 1], below)
    hook = registry.hooks.pop(HOOK_NAME)
    registry._hook_order.pop(index)
    registry._fn_refs.pop(index)
    hook.deinitalize_hook(model)
    current = model.__dict__.get("forward")
    if getattr(current, "__func__", None) is type(model).forward and getattr(current, "__self__", None) is model:
        del model.__dict__["forward"]  # the stock forward again
    if created and not registry.hooks:
        del model.__dict__["_diffusers_hook"]
    else:
        _invalidate(registry)


_UNSET = object()  # no plan yet for the next call


@torch.compiler.disable
def _host_plan(state: Attachment, module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run tracking and the method's plan for one call (host side, never traced)."""
    ctx = state.tracker(state.adapter.timestep_of(args, kwargs))
    if ctx is not None and ctx.new_run:
        check_block_hooks(module, state.method)  # a stateful block hook added after us
        state.method.start_run(ctx)
    plan = getattr(state.method, "plan", None)
    if plan is None:  # extension methods get the step context itself (None for a direct call)
        return ctx
    block = _reference_block(module, state.method)
    reference = next(block.parameters())
    follow = getattr(state.method, "follow", None)
    if follow is not None:
        follow(reference.device, compute_dtype(block))  # the compute dtype, not a float8 storage dtype
    return plan(ctx, reference)


def _host_side(state: Attachment):
    """The forward pre-hook: the host side of every call, outside any compiled graph."""

    @torch.compiler.disable
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if state.bypass_depth == 0:
            state.plan = _host_plan(state, module, args, kwargs)

    return pre_hook


def _reference_block(model: nn.Module, method: Any) -> nn.Module:
    index = getattr(getattr(method, "config", None), "loop_end", 0) if method.name == "feedback" else 0
    return model.transformer_blocks[index]


def _install(model: nn.Module, state: Attachment) -> None:
    check_block_hooks(model, state.method)
    state.method_owner = model
    state.plan = _UNSET
    state.hook = MethodHook(state)
    state.created_registry = _insert_innermost(model, state.hook)
    state.handle = model.register_forward_pre_hook(_host_side(state), with_kwargs=True)
    model.__dict__[STATE_ATTR] = state


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


def _tracker(pipeline: Any, scheduler: Any) -> RunTracker:
    return RunTracker(scheduler if scheduler is not None else pipeline)


def apply_feedback(target: Any, config: FeedbackConfig | None = None, scheduler: Any = None) -> nn.Module:
    """Attach Inner Loop Feedback (paper Sec. 3) to a transformer or stock pipeline; returns the transformer.

    Creates the feedback block F (an eager copy of block e in the dtype block e computes in, trainable) and
    the scales (float32 zeros, shape (m,)), owned by the method, not registered on the model; freezes every
    backbone parameter. F and the scales are normal tensors (never inference tensors), whatever mode this
    or any later call runs in. In a pipeline call, feedback follows `config.feedback_steps` and
    `config.t_post` using the pipeline's (or the given) scheduler; a direct call runs feedback with
    t_post = t.
    """
    config = _as_config(config, FeedbackConfig)
    model, pipeline = resolve_target(target)
    _check_free(model)
    num_blocks = len(model.transformer_blocks)
    config.validate(num_blocks)
    block = make_feedback_block(model, config)
    ref_param = next(model.transformer_blocks[config.loop_end].parameters())
    with torch.inference_mode(False):
        scales = nn.Parameter(torch.zeros(config.loop_size, dtype=torch.float32, device=ref_param.device))  # s_i = 0
    method = FeedbackMethod(config, num_blocks, block, scales)
    state = Attachment(method, adapter_for(model), _tracker(pipeline, scheduler),
                       {n: p.requires_grad for n, p in model.named_parameters()})
    _install(model, state)
    model.requires_grad_(False)  # the backbone is frozen; only F and the scales learn
    model.__dict__[FEEDBACK_BLOCK] = block
    model.__dict__[FEEDBACK_SCALES] = scales
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
                       _tracker(pipeline, scheduler))
    _install(model, state)
    return model


def attach_method(target: Any, method: Any, scheduler: Any = None) -> nn.Module:
    """Attach any method object (`__call__(adapter, model, prep, plan)`, `start_run(ctx)`, `name`, `config`).

    The extension point for methods of one's own (the library peers attach with `ilf.peers.apply_peer`).
    Without a `plan(ctx, reference)` method, the forward receives the `StepContext` (or None for a direct
    call) as `plan`; with one, its result.
    """
    model, pipeline = resolve_target(target)
    _check_free(model)
    _install(model, Attachment(method, adapter_for(model), _tracker(pipeline, scheduler)))
    return model


def remove(target: Any) -> nn.Module:
    """Detach whichever method is attached; the model is then exactly the original. No-op if none is.

    Other diffusers hooks on the model stay attached and keep working.
    """
    model, _ = resolve_target(target)
    if "_ilf_peer" in model.__dict__:  # a peer method (ilf.peers): its own exact undo
        from .peers import remove_peer

        return remove_peer(model)
    state: Attachment | None = model.__dict__.pop(STATE_ATTR, None)
    if state is None:
        return model
    state.handle.remove()
    _unlink(model, state.created_registry)
    for alias in _ALIASES:
        model.__dict__.pop(alias, None)
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    return model


def _reset_state(state: Attachment) -> None:
    state.tracker.reset()
    if hasattr(state.method, "reset"):
        state.method.reset()


def reset(target: Any) -> None:
    """Forget per-run state (cache residuals, step counter, current run) of the attached method."""
    state = get_attachment(target)
    if state is not None:
        _reset_state(state)


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
    state: Attachment | None = model.__dict__.get(STATE_ATTR)
    if state is None or getattr(state.method, "feedback", None) is None:
        raise ILFConfigError("target", type(model).__name__, "a model with ILF attached (call apply_feedback first)")
    return list(state.method.feedback.parameters()) + [state.method.scales]
