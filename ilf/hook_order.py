"""Inserting a hook innermost in a diffusers `HookRegistry` and taking it out again.

`HookRegistry.register_hook` only ever adds a hook outermost, and `remove_hook` removes it by name from any
position; neither puts a hook *below* the ones already registered. ILF and the cache must sit directly around
the stock forward (so model-level hooks applied before or after them wrap them), so this module rewrites the
registry's chain by hand. It is the only place in `ilf` that does, and it relies on exactly these diffusers
internals (diffusers/hooks/hooks.py, checked by tests/core/test_hook_order.py on the installed version):

- `module._diffusers_hook`: the module's `HookRegistry`, an instance attribute (`check_if_exists_or_initialize`).
- `HookRegistry.hooks`: dict name -> `ModelHook`; `HookRegistry._hook_order`: list of names, innermost first
  (registration order); `HookRegistry._fn_refs`: list of `HookFunctionReference`, parallel to `_hook_order`.
- `register_hook(hook, name)` wraps the module's current `forward` and sets the wrapper as the instance
  attribute `module.forward`; the hook's `HookFunctionReference` (`hook.fn_ref`) calls the forward below it
  through `original_forward` when the hook has a `new_forward`, else through `forward` (`original_forward`
  is None).
- `ModelHook.deinitalize_hook(module)` (diffusers' spelling) undoes `initialize_hook`; `ModelHook._is_stateful`.
- `HookRegistry.invalidate_child_registries_cache()` (diffusers >= 0.42; skipped where absent).
"""
from __future__ import annotations

from typing import Any, Iterator

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from .errors import AlreadyAttachedError


def insert_innermost(model: nn.Module, hook: ModelHook, name: str) -> bool:
    """Register `hook` as `name` directly around the model's stock forward, below every hook already there.

    Args:
        model: the module whose registry receives the hook.
        hook: the hook; its `new_forward` calls `self.fn_ref.original_forward`, the stock forward.
        name: the hook's name in the registry.

    Returns:
        True if this call created the model's `HookRegistry` (so `unlink` drops it again when it is empty).

    Raises:
        AlreadyAttachedError: the registry already has a hook named `name`.
    """
    created = not hasattr(model, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(model)
    if name in registry.hooks:
        raise AlreadyAttachedError(f"{type(model).__name__} already has a hook named {name!r}")
    top = model.__dict__.pop("forward", None)
    hooks, order, refs = registry.hooks, registry._hook_order, registry._fn_refs
    registry.hooks, registry._hook_order, registry._fn_refs = {}, [], []
    try:
        registry.register_hook(hook, name)  # diffusers wires the hook's forward around the stock one
    finally:
        mine = model.__dict__.pop("forward")
        registry.hooks = {name: hook, **hooks}
        registry._hook_order = [name, *order]
        registry._fn_refs = [hook.fn_ref, *refs]
    if refs:  # the previously innermost hook now calls ours instead of the stock forward
        _link(refs[0], mine)
        model.forward = top
    else:
        model.forward = mine
    _invalidate(registry)
    return created


def unlink(model: nn.Module, name: str, created: bool) -> None:
    """Take the hook `name` out of the model's registry wherever it sits; the hooks above it keep working.

    Args:
        model: the module `insert_innermost` registered the hook on.
        name: the hook's name.
        created: what `insert_innermost` returned: the registry is dropped if it is then empty.
    """
    registry = model.__dict__.get("_diffusers_hook")
    if registry is None or name not in registry.hooks:
        return
    index = registry._hook_order.index(name)
    mine = registry._fn_refs[index]
    below = mine.original_forward if mine.original_forward is not None else mine.forward
    if index == len(registry._hook_order) - 1:
        model.forward = below
    else:
        _link(registry._fn_refs[index + 1], below)
    hook = registry.hooks.pop(name)
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


def stateful_hooks(root: nn.Module) -> Iterator[tuple[str, str, ModelHook]]:
    """(module name, hook name, hook) of every stateful diffusers hook on `root` and its submodules."""
    for module_name, module in root.named_modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is None:
            continue
        for hook_name in registry._hook_order:
            hook = registry.hooks[hook_name]
            if getattr(hook, "_is_stateful", False):
                yield module_name, hook_name, hook


def _invalidate(registry: Any) -> None:
    invalidate = getattr(registry, "invalidate_child_registries_cache", None)  # diffusers >= 0.42
    if invalidate is not None:
        invalidate()


def _link(fn_ref: Any, below: Any) -> None:
    """Make the hook of `fn_ref` call `below` as the forward beneath it."""
    if fn_ref.original_forward is not None:  # a hook with `new_forward` calls `original_forward`
        fn_ref.original_forward = below
    else:
        fn_ref.forward = below
