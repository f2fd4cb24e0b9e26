"""The diffusers internals `ilf/hook_order.py` rewrites, checked on the installed diffusers.

If diffusers changes how `HookRegistry` keeps its chain, these fail first (with the attribute named), before
the attach tests fail in a less telling way. The checks mirror the list in `ilf.hook_order`'s docstring.
"""
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import HookFunctionReference
from torch import nn

from ilf.hook_order import insert_innermost, stateful_hooks, unlink


class Outer(ModelHook):
    """A hook with its own `new_forward`: calls the forward below it through `fn_ref.original_forward`."""

    _is_stateful = True

    def new_forward(self, module, *args, **kwargs):
        return self.fn_ref.original_forward(*args, **kwargs) + 1


class Pre(ModelHook):
    """A hook without `new_forward`: diffusers calls the forward below it through `fn_ref.forward`."""

    def pre_forward(self, module, *args, **kwargs):
        return (args[0] * 2,), kwargs


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 3)


def test_registry_internals_have_the_layout_hook_order_relies_on():
    model = _module()
    stock = model.forward
    registry = HookRegistry.check_if_exists_or_initialize(model)
    assert model.__dict__["_diffusers_hook"] is registry  # the registry is an instance attribute
    assert registry.hooks == {} and registry._hook_order == [] and registry._fn_refs == []
    outer, pre = Outer(), Pre()
    registry.register_hook(outer, "outer")
    first_wrapper = model.__dict__["forward"]  # register_hook sets the wrapper as an instance attribute
    registry.register_hook(pre, "pre")
    # hooks: name -> hook; _hook_order: names, innermost first; _fn_refs: parallel to _hook_order
    assert isinstance(registry.hooks, dict) and registry.hooks == {"outer": outer, "pre": pre}
    assert isinstance(registry._hook_order, list) and registry._hook_order == ["outer", "pre"]
    assert isinstance(registry._fn_refs, list) and len(registry._fn_refs) == 2
    assert all(isinstance(r, HookFunctionReference) for r in registry._fn_refs)
    assert registry._fn_refs[0] is outer.fn_ref and registry._fn_refs[1] is pre.fn_ref
    # a hook with `new_forward` reaches the forward below through `original_forward` ...
    assert outer.fn_ref.original_forward == stock
    # ... one without it through `forward` (`original_forward` stays None)
    assert pre.fn_ref.original_forward is None and pre.fn_ref.forward is first_wrapper
    x = torch.ones(1, 3)
    assert torch.equal(model(x), stock(2 * x) + 1)  # the instance `forward` is the outermost wrapper
    # what `unlink` and `check_block_hooks` call or read
    assert callable(outer.deinitalize_hook) and outer._is_stateful is True and pre._is_stateful is False
    invalidate = getattr(registry, "invalidate_child_registries_cache", None)  # optional (diffusers >= 0.42)
    assert invalidate is None or callable(invalidate)


def test_insert_innermost_goes_below_registered_hooks_and_unlink_restores():
    model = _module()
    x = torch.ones(1, 3)
    stock = model(x)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(Pre(), "pre")

    class Negate(ModelHook):
        def new_forward(self, module, *args, **kwargs):
            return -self.fn_ref.original_forward(*args, **kwargs)

    created = insert_innermost(model, Negate(), "mine")
    assert created is False and registry._hook_order == ["mine", "pre"]
    assert torch.equal(model(x), -model.__class__.forward(model, 2 * x))  # pre runs first, then ours
    unlink(model, "mine", created)
    assert registry._hook_order == ["pre"] and "mine" not in registry.hooks
    registry.remove_hook("pre")  # (diffusers leaves the bound stock forward as an instance attribute)
    assert torch.equal(model(x), stock)


def test_insert_on_a_bare_module_creates_and_unlink_drops_the_registry():
    model = _module()
    x = torch.ones(1, 3)
    stock = model(x)
    created = insert_innermost(model, Outer(), "mine")
    assert created is True and torch.equal(model(x), stock + 1)
    assert [(m, h) for m, h, _ in stateful_hooks(model)] == [("", "mine")]
    unlink(model, "mine", created)
    assert "_diffusers_hook" not in model.__dict__ and "forward" not in model.__dict__
    assert torch.equal(model(x), stock)
