"""peft LoRA layers (diffusers' `load_lora_weights`) on a backbone: what a method re-running the forward in pieces
must know about them (METHOD.md, "LoRA").

- LoRA's per-call `scale` in a forward's attention kwargs is applied by diffusers' `apply_lora_scale` wrapper around
  the stock forward (`diffusers.utils.peft_utils`); an adapter re-running the forward in pieces does not re-run it.
- The feedback block F is a plain block of the backbone's class: a copy of a LoRA-carrying block e computes as
  block e does (active adapters merged into the base weights) and holds no LoRA layers (`merge_lora`); checkpoint
  names are the plain block's (`plain_names`).
"""
from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

from ..errors import UnsupportedModelError

V = TypeVar("V")


def tuner_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft tuner layers (LoRA, DoRA, ...) inside `module`, by name; none when peft is not installed."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no LoRA layers
        return []
    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def has_lora(model: nn.Module) -> bool:
    """Whether `model` carries peft tuner layers (a LoRA loaded with `load_lora_weights`, fused or not)."""
    return bool(tuner_layers(model))


def check_lora_scale(model: nn.Module, attention_kwargs: dict[str, Any] | None, name: str = "attention_kwargs") -> None:
    """Refuse a LoRA `scale` other than 1: the stock forward's `apply_lora_scale` wrapper is not re-run in pieces.

    Args:
        model: the transformer (named in the message).
        attention_kwargs: the forward's attention kwargs (None: nothing to check).
        name: the argument's name in the forward (`attention_kwargs`, FLUX's `joint_attention_kwargs`).

    Raises:
        UnsupportedModelError: `attention_kwargs["scale"]` is set to a value other than 1.0.
    """
    scale = (attention_kwargs or {}).get("scale", 1.0)
    if scale != 1.0:
        raise UnsupportedModelError(f"{name}={{'scale': {scale}}} is not supported with a method attached to "
                                    f"{type(model).__name__}: fuse the LoRA at that scale (pipe.fuse_lora("
                                    f"lora_scale={scale})) or call ilf.remove first")


def merge_lora(block: nn.Module) -> nn.Module:
    """Turn `block` (a private copy) into a plain block computing what its LoRA-carrying original computes.

    Each tuner layer is brought to the state its forward runs in (peft's `LoraLayer.forward`: adapters disabled ->
    the base weights; merged (`fuse_lora`) -> the base weights, which hold the merge; otherwise the active adapters,
    at their `set_adapters` weights, merged into the base weights: W + scaling * B A), then replaced by its base
    layer (diffusers' `recurse_remove_peft_layers`, what `unload_lora_weights` does). Equal to the original's
    output up to the rounding of the merge.

    Args:
        block: a copy of a transformer block (modified in place); a block without tuner layers is returned as is.

    Returns:
        `block`, without peft layers, parameter names those of the plain block.
    """
    layers = tuner_layers(block)
    if not layers:
        return block
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    for _, layer in layers:
        if layer.disable_adapters:
            if layer.merged:
                layer.unmerge()
        elif not layer.merged:
            layer.merge()
    return recurse_remove_peft_layers(block)


def plain_names(block: nn.Module, named: dict[str, V]) -> dict[str, V]:
    """`named` (e.g. `block.state_dict()`) keyed as the block without tuner layers names it.

    A tuner layer `p` holds its base layer as `p.base_layer.*` (kept, renamed `p.*`) and its adapters' tensors
    (`p.lora_A.<adapter>.*`, ..., left out).

    Args:
        block: the block whose names `named` uses (a `torch.compile` wrapper unwrapped).
        named: values by `block`'s names.

    Returns:
        The base layers' values by the plain block's names (`named` itself when `block` has no tuner layers).
    """
    prefixes = [p + "." for p, _ in tuner_layers(block)]
    if not prefixes:
        return named
    out = {}
    for name, value in named.items():
        prefix = max((p for p in prefixes if name.startswith(p)), key=len, default=None)
        if prefix is None:
            out[name] = value
        elif name.startswith(prefix + "base_layer."):
            out[prefix + name[len(prefix + "base_layer."):]] = value
    return out
