"""LoRA's `scale` in a forward's attention kwargs, which diffusers' `apply_lora_scale` wrapper applies around the
stock forward (`diffusers.utils.peft_utils`): an adapter re-running the forward in pieces does not re-run it."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UnsupportedModelError


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
