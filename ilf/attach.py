"""Attach a method to an unmodified diffusers transformer or pipeline, and detach it again.

This is the layer every method shares (ILF in `ilf/feedback.py`, the cache in `ilf/cache.py`, one's own
through `attach_method`); it names none of them. A method is a hook among diffusers' hooks
(`diffusers.hooks.HookRegistry`, as `apply_first_block_cache`):

- `MethodHook`, a `ModelHook` named "ilf", re-runs the forward through the backbone's adapter
  (`ilf/adapters/`). It is inserted innermost, in place of the stock forward (`ilf/hook_order.py`), so
  model-level hooks applied before or after it (`apply_faster_cache`, custom `ModelHook`s) wrap it and keep
  working; block-level hooks run inside the loop because every block is called through its module. `remove`
  unlinks exactly this hook.
- The per-step host logic (which run and step, the method's `plan`) runs in a forward pre-hook that
  `torch.compile` leaves out of the graph (`torch.compiler.disable`); the compiled forward only reads its
  result (`Attachment.plan`: bools, a slot and a 0-d tensor), so a compiled transformer has no graph break and
  at most two graphs per method.
- Nothing is registered on the transformer: what a method owns (ILF's feedback block and scales) stays out of
  `state_dict`, `dtype` and `save_pretrained`; read-only aliases (`Method.aliases`) are plain attributes. A
  method that trains freezes the backbone while attached (`install(..., freeze=True)`); `remove` restores every
  `requires_grad` flag.

One transformer carries at most one method: its record (`Record`: an `Attachment` here, a
`ilf.peers.PeerState` for a peer) is the one attribute `STATE_ATTR`, `check_free` the one "already attached"
check, and `remove` detaches whatever the record holds.

Stateful diffusers hooks inside the blocks (caches such as first-block cache, pyramid attention
broadcast, FasterCache's attention part) assume one call per block per step; ILF calls the loop blocks twice
and the cache skips blocks, so that combination raises `AlreadyAttachedError` naming both.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.layerwise_casting import LayerwiseCastingHook
from diffusers.utils.torch_utils import unwrap_module
from torch import nn

from .adapters import Adapter, Prepared, adapter_for, model_blocks, named_blocks, supported
from .context import RunTracker, StepContext
from .errors import AlreadyAttachedError, ILFConfigError, UnsupportedModelError
from .hook_order import insert_innermost, stateful_hooks, unlink

STATE_ATTR = "_ilf_attachment"  # the key of a transformer's record in its __dict__ while a method is attached
HOOK_NAME = "ilf"


class Method(Protocol):
    """What `attach_method` attaches: one transformer call as the method runs it.

    `name`, `config`, `start_run` and `__call__` are required. The others are optional; without them an
    extension method gets: `plan` -> the `StepContext` itself as the plan (None for a direct call); `follow`,
    `reset`, `aliases` -> nothing; `reference_block` -> 0; `label` -> "<name> (ilf.attach_method)".
    """

    name: str  # short name, e.g. in errors and `repr`
    config: Any  # the method's settings (`Attachment.config`)
    label: str  # how errors name the method and its entry point, e.g. "ILF (ilf.apply_feedback)"
    reference_block: int  # index of the block whose device / compute dtype `follow` and `plan` get

    def start_run(self, ctx: StepContext) -> None:
        """Host side, at the first call of every sampling run (e.g. check the schedule fits its step count)."""

    def follow(self, device: torch.device, dtype: torch.dtype) -> None:
        """Host side, every call: move what the method owns to the reference block's device and compute dtype."""

    def plan(self, ctx: StepContext | None, reference: torch.Tensor) -> Any:
        """Host side, every call: what the compiled forward needs to know (None ctx: a call outside a run)."""

    def __call__(self, adapter: Adapter, model: nn.Module, prep: Prepared, plan: Any) -> Any:
        """The forward, through the adapter's pieces; returns what the stock forward returns."""

    def reset(self) -> None:
        """Forget per-run state (`ilf.reset`, the registry's `reset_stateful_hooks`)."""

    def aliases(self) -> dict[str, Any]:
        """Read-only attributes to set on the transformer while attached (name -> object)."""


class Record(Protocol):
    """What `STATE_ATTR` holds while a method or peer is attached."""

    name: str
    config: Any

    @property
    def description(self) -> str:
        """The attached method, for "already attached" errors."""

    def detach(self, model: nn.Module) -> None:
        """Restore `model` exactly (its record is already taken off)."""


@dataclass
class Attachment:
    """Per-model state of a method attached through this layer (kept until `remove`)."""

    method: Method
    adapter: Adapter
    tracker: RunTracker
    requires_grad: dict[nn.Parameter, bool] = field(default_factory=dict)  # backbone flags before attaching (frozen
    # methods), by parameter: a LoRA loaded or unloaded meanwhile renames base weights, it does not replace them
    bypass_depth: int = 0
    plan: Any = None  # what the host side decided for the current call (read, then cleared, by the forward)
    hook: Any = None
    handle: Any = None  # the forward pre-hook running the host side
    created_registry: bool = False
    aliases: tuple[str, ...] = ()  # the alias attributes set on the transformer

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def config(self) -> Any:
        return self.method.config

    @property
    def description(self) -> str:
        return f"{self.method.name} ({self.config})"

    @property
    def scheduler_ref(self) -> Any:
        return self.tracker.scheduler_ref

    @scheduler_ref.setter
    def scheduler_ref(self, ref: Any) -> None:
        self.tracker.scheduler_ref = ref
        self.tracker.reset()

    def scheduler(self) -> Any:
        return self.tracker.scheduler_ref() if self.tracker.scheduler_ref is not None else None

    def detach(self, model: nn.Module) -> None:
        """Take the hook, the pre-hook and the aliases off and restore every `requires_grad` flag."""
        self.handle.remove()
        unlink(model, HOOK_NAME, self.created_registry)
        for alias in self.aliases:
            model.__dict__.pop(alias, None)
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)


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


def casting_hook(module: nn.Module) -> LayerwiseCastingHook | None:
    """The diffusers layerwise-casting hook on `module` itself, or None."""
    registry = module.__dict__.get("_diffusers_hook")
    hooks = registry.hooks.values() if registry is not None else ()
    return next((h for h in hooks if isinstance(h, LayerwiseCastingHook)), None)


def compute_dtype(block: nn.Module) -> torch.dtype:
    """The dtype `block` computes in: its layerwise-casting hooks' compute dtype, else its first parameter's dtype.

    Args:
        block: a transformer block (a `torch.compile` wrapper is looked through).

    Returns:
        The compute dtype (not the storage dtype of diffusers' `enable_layerwise_casting`).
    """
    block = unwrap_module(block)
    for module in block.modules():
        hook = casting_hook(module)
        if hook is not None:
            return hook.compute_dtype
    return next(block.parameters()).dtype


def _unwrap(target: Any) -> Any:
    return unwrap_module(target) if isinstance(target, nn.Module) else target  # a torch.compile wrapper


def resolve_target(target: Any) -> tuple[nn.Module, Any]:
    """The transformer a target names, and its pipeline.

    Args:
        target: a supported transformer, or a pipeline holding one as `.transformer` with a `.scheduler`
            (either may be a `torch.compile` wrapper).

    Returns:
        (transformer, pipeline or None).

    Raises:
        UnsupportedModelError: no adapter (`ilf/adapters/`) serves the target (the message names what does), or
            the pipeline holds a second transformer (`transformer_2`).
    """
    if isinstance(target, nn.Module):
        model = _unwrap(target)
        adapter_for(model)
        return model, None
    transformer = getattr(target, "transformer", None)
    if isinstance(transformer, nn.Module) and hasattr(target, "scheduler"):
        if getattr(target, "transformer_2", None) is not None:  # Wan 2.2 A14B: a second expert for low noise
            raise UnsupportedModelError(
                f"target={type(target).__name__} with a second transformer (transformer_2) is not supported: a "
                "method on `.transformer` alone would skip the steps transformer_2 runs")
        model = _unwrap(transformer)
        adapter_for(model)
        return model, target
    raise UnsupportedModelError(f"target={type(target).__name__} is not supported: expected {supported()}")


def get_record(model: nn.Module) -> Record | None:
    """The record of whatever is attached to a transformer (a method or a peer), or None."""
    return model.__dict__.get(STATE_ATTR)


def set_record(model: nn.Module, record: Record) -> None:
    """Mark `model` as carrying `record` (after `check_free`); `remove` calls `record.detach(model)`."""
    model.__dict__[STATE_ATTR] = record


def check_free(model: nn.Module) -> None:
    """Refuse a second method on one transformer (ILF, the cache, an extension method or a peer).

    Raises:
        AlreadyAttachedError: something is attached; the message names it.
    """
    existing = get_record(model)
    if existing is not None:
        raise AlreadyAttachedError(f"{type(model).__name__} already has {existing.description} attached; "
                                   "call ilf.remove(target) before applying another method")


def get_attachment(target: Any) -> Attachment | None:
    """The state of the method attached through this layer (ILF, the cache, `attach_method`).

    Args:
        target: a transformer or pipeline (as `resolve_target`).

    Returns:
        Its `Attachment` (`method`, `config`, `adapter`, ...), or None when none is attached (or a peer is).

    Raises:
        UnsupportedModelError: the target is not supported.

    Example:
        ```py
        state = ilf.get_attachment(pipe)
        if state is not None and state.method.name == "feedback":
            print(state.config.loop_start, state.config.loop_end)
        ```
    """
    model, _ = resolve_target(target)
    record = get_record(model)
    return record if isinstance(record, Attachment) else None


def _method_label(method: Any) -> str:
    return getattr(method, "label", None) or f"{method.name} (ilf.attach_method)"


def check_block_hooks(model: nn.Module, method: Any) -> None:
    """Raise `AlreadyAttachedError` if a stateful diffusers hook sits inside the block sequence."""
    for block_name, block in named_blocks(model):
        for name, hook_name, hook in stateful_hooks(block):
            where = block_name + (f".{name}" if name else "")
            raise AlreadyAttachedError(
                f"{_method_label(method)} cannot be combined with diffusers' {hook_name!r} hook "
                f"({type(hook).__name__}) on {where}: that hook keeps per-step state that assumes one call "
                f"per block per step, while {method.name} calls blocks a different number of times. Remove one "
                "of them (ilf.remove(target) / HookRegistry.remove_hook).")


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
    block = model_blocks(module)[getattr(state.method, "reference_block", 0)]
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


def as_config(config: Any, cls: type) -> Any:
    """The config as `cls`: None -> defaults, a dict -> `cls.from_dict`, anything else -> a clear error."""
    if config is None:
        return cls()
    if isinstance(config, dict):
        return cls.from_dict(config)
    if not isinstance(config, cls):
        raise ILFConfigError("config", type(config).__name__, f"a {cls.__name__} (or a dict of its fields)")
    return config


def install(model: nn.Module, pipeline: Any, method: Any, scheduler: Any = None, freeze: bool = False) -> Attachment:
    """Attach `method` to a resolved transformer (`resolve_target`); the entry points' shared last step.

    Args:
        model: the transformer.
        pipeline: its pipeline, or None: the method follows `scheduler`, else the pipeline's scheduler.
        method: a `Method`.
        scheduler: the scheduler whose runs a bare transformer follows (None: every call is its own step).
        freeze: freeze every backbone parameter while attached (`remove` restores the flags).

    Returns:
        The model's new `Attachment`.

    Raises:
        AlreadyAttachedError: something is attached, or a stateful diffusers hook sits inside the blocks.
    """
    check_free(model)
    check_block_hooks(model, method)
    flags = {p: p.requires_grad for p in model.parameters()} if freeze else {}
    state = Attachment(method, adapter_for(model), RunTracker(scheduler if scheduler is not None else pipeline),
                       flags)
    state.plan = _UNSET
    state.hook = MethodHook(state)
    state.created_registry = insert_innermost(model, state.hook, HOOK_NAME)
    state.handle = model.register_forward_pre_hook(_host_side(state), with_kwargs=True)
    set_record(model, state)
    if freeze:
        model.requires_grad_(False)
    aliases = getattr(method, "aliases", None)
    for name, value in (aliases() if aliases is not None else {}).items():
        model.__dict__[name] = value
        state.aliases += (name,)
    return state


def attach_method(target: Any, method: Any, scheduler: Any = None) -> nn.Module:
    """Attach a method object of one's own: the extension point beside `apply_feedback` and `apply_cache`.

    Args:
        target: a supported transformer or a stock pipeline holding one (see `resolve_target`).
        method: a `Method`: at least `name`, `config`, `start_run(ctx)` and `__call__(adapter, model, prep, plan)`.
            Without `plan(ctx, reference)` the forward receives the `StepContext` (None for a direct call) as
            `plan`; with one, its result.
        scheduler: the scheduler a bare transformer's calls follow (a pipeline's own is used otherwise).

    Returns:
        The transformer (unwrapped from a pipeline or `torch.compile`).

    Raises:
        UnsupportedModelError: the target is not supported.
        AlreadyAttachedError: a method or peer is attached, or a stateful diffusers hook sits inside the blocks.

    Example:
        ```py
        class Plain:  # the backbone, block by block
            name, config = "plain", None

            def start_run(self, ctx):
                pass

            def __call__(self, adapter, model, prep, ctx):
                cond = adapter.cond(model, prep, prep.timestep)
                h = prep.hidden
                for block in ilf.model_blocks(model):
                    h = adapter.block(model, block, h, prep, cond)
                return adapter.head(model, h, prep, cond)

        ilf.attach_method(pipe, Plain())
        ```
    """
    model, pipeline = resolve_target(target)
    install(model, pipeline, method, scheduler)
    return model


def remove(target: Any) -> nn.Module:
    """Detach whatever is attached (ILF, the cache, an extension method or a peer); no-op if nothing is.

    The model is then exactly the original: its forward, parameters, `requires_grad` flags (each parameter's as
    when the method was attached, also one a LoRA loaded since renamed) and `__dict__`. Other diffusers hooks on
    the model stay attached and keep working.

    Args:
        target: a supported transformer (PixArt, DiT, FLUX.1, SD3, Qwen-Image, Sana, Wan:
            `ilf.adapters.supported()`) or a stock pipeline holding it (as `resolve_target`).

    Returns:
        The transformer.

    Raises:
        UnsupportedModelError: the target is not supported.

    Example:
        ```py
        ilf.apply_cache(pipe, ilf.CacheConfig())
        ilf.remove(pipe)  # pipe.transformer is the stock model again
        ```
    """
    model, _ = resolve_target(target)
    record = model.__dict__.pop(STATE_ATTR, None)
    if record is not None:
        record.detach(model)
    return model


def _reset_state(state: Attachment) -> None:
    state.tracker.reset()
    if hasattr(state.method, "reset"):
        state.method.reset()


def reset(target: Any) -> None:
    """Forget the attached method's per-run state (cache residuals, step counter, current run).

    A pipeline's runs reset this by themselves; a bare transformer driven by one's own loop without a
    scheduler calls it between runs. No-op when nothing (or a peer: `ilf.peers.reset_peer`) is attached.

    Args:
        target: a transformer or pipeline (as `resolve_target`).

    Raises:
        UnsupportedModelError: the target is not supported.

    Example:
        ```py
        model = ilf.apply_cache(transformer, ilf.CacheConfig(interval=2))
        for t in timesteps: ...  # one run, every call is the next step
        ilf.reset(model)  # the next call is step 0 again
        ```
    """
    state = get_attachment(target)
    if state is not None:
        _reset_state(state)


@contextmanager
def bypass(target: Any) -> Iterator[nn.Module]:
    """Run the plain backbone (the stock forward) inside the block, e.g. for the distillation teacher.

    Nestable; no-op when nothing is attached. The method's state (e.g. cached residuals) is untouched.

    Args:
        target: a transformer or pipeline (as `resolve_target`).

    Returns:
        A context manager yielding the transformer.

    Raises:
        UnsupportedModelError: the target is not supported.

    Example:
        ```py
        model = ilf.apply_feedback(pipe, ilf.FeedbackConfig(8, 19))
        with ilf.bypass(model), torch.no_grad():
            teacher = model(x_t, encoder_hidden_states=c, timestep=t).sample  # no feedback
        student = model(x_t, encoder_hidden_states=c, timestep=t).sample
        ```
    """
    model, _ = resolve_target(target)
    state = get_attachment(model)
    if state is None:
        yield model
        return
    state.bypass_depth += 1
    try:
        yield model
    finally:
        state.bypass_depth -= 1
