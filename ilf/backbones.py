"""Backbone adapters: a diffusers transformer's forward split into input, per-block calls and output head.

ILF needs three things a stock forward does not expose (METHOD.md, "A step with feedback"):
`cond(t)` for an arbitrary timestep, one block call at a given condition, and the output head at a
given condition. Each adapter re-states its model's forward in those three pieces, numbered like
diffusers' own (`# 1. Input`, `# 2. Blocks`, `# 3. Output`); the plain composition of the pieces
is bit-identical to the stock forward (tested). To support another diffusion transformer, write one
adapter and add it to `ADAPTERS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .errors import UnsupportedModelError


@dataclass
class Prepared:
    """Everything one forward call needs besides the block loop (the output of `# 1. Input`)."""

    hidden: torch.Tensor  # (B, T, D) tokens after patch embedding
    timestep: torch.Tensor  # (B,) the time condition the caller passed (t)
    height: int  # patch-grid height
    width: int  # patch-grid width
    return_dict: bool
    kwargs: dict[str, Any] = field(default_factory=dict)  # adapter-specific static inputs (captions, labels, masks)


def _as_batch_timestep(timestep: Any, batch_size: int, device: torch.device) -> torch.Tensor:
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], device=device)
    if timestep.ndim == 0:
        timestep = timestep[None]
    if timestep.shape[0] == 1 and batch_size > 1:
        timestep = timestep.expand(batch_size)
    return timestep


def _unpatchify(h: torch.Tensor, height: int, width: int, p: int, c: int) -> torch.Tensor:
    h = h.reshape(shape=(-1, height, width, p, p, c))
    h = torch.einsum("nhwpqc->nchpwq", h)
    return h.reshape(shape=(-1, c, height * p, width * p))


def call_block(model: nn.Module, block: nn.Module, h: torch.Tensor, args: tuple) -> torch.Tensor:
    """One block forward, through the module's `__call__` (so forward hooks count it), with checkpointing."""
    if torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False):
        return model._gradient_checkpointing_func(block, h, *args)
    return block(h, *args)


def _argument(args: tuple, kwargs: dict, name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


class PixArtAdapter:
    """`PixArtTransformer2DModel` (PixArt-alpha and PixArt-sigma): cond(t) = adaLN-single modulation."""

    model_class = PixArtTransformer2DModel

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return _argument(args, kwargs, "timestep", 2)

    @staticmethod
    def prepare(model, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None,
                return_dict=True) -> Prepared:
        # 1. Input (as PixArtTransformer2DModel.forward)
        if model.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("`added_cond_kwargs` cannot be None when using additional conditions for `adaln_single`.")
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = (1 - attention_mask.to(hidden_states.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)
        batch_size = hidden_states.shape[0]
        p = model.config.patch_size
        height, width = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        h = model.pos_embed(hidden_states)  # (B, T, D)
        if model.caption_projection is not None:
            encoder_hidden_states = model.caption_projection(encoder_hidden_states)
            encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, h.shape[-1])
        return Prepared(h, _as_batch_timestep(timestep, batch_size, h.device), height, width, return_dict,
                        dict(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                             cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                             encoder_attention_mask=encoder_attention_mask))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond(t): (block modulation (B, 6D), embedded timestep (B, D)) from adaLN-single."""
        return model.adaln_single(timestep, prep.kwargs["added_cond_kwargs"], batch_size=prep.hidden.shape[0],
                                  hidden_dtype=prep.hidden.dtype)

    @staticmethod
    def block(model, block: nn.Module, h: torch.Tensor, prep: Prepared, cond) -> torch.Tensor:
        # 2. One block at condition `cond`
        k = prep.kwargs
        return call_block(model, block, h, (k["attention_mask"], k["encoder_hidden_states"],
                                            k["encoder_attention_mask"], cond[0], k["cross_attention_kwargs"], None))

    @staticmethod
    def head(model, h: torch.Tensor, prep: Prepared, cond):
        # 3. Output (final layer at the condition's embedded timestep)
        embedded_timestep = cond[1]
        shift, scale = (model.scale_shift_table[None] + embedded_timestep[:, None].to(model.scale_shift_table.device)).chunk(2, dim=1)
        h = model.norm_out(h)
        h = h * (1 + scale.to(h.device)) + shift.to(h.device)
        h = model.proj_out(h)
        h = h.squeeze(1)
        out = _unpatchify(h, prep.height, prep.width, model.config.patch_size, model.out_channels)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


class DiTAdapter:
    """`DiTTransformer2DModel`: every block embeds (t, class) itself through its AdaLayerNormZero."""

    model_class = DiTTransformer2DModel

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""
        return _argument(args, kwargs, "timestep", 1)

    @staticmethod
    def prepare(model, hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None,
                return_dict=True) -> Prepared:
        # 1. Input (as DiTTransformer2DModel.forward)
        height, width = hidden_states.shape[-2] // model.patch_size, hidden_states.shape[-1] // model.patch_size
        h = model.pos_embed(hidden_states)
        return Prepared(h, _as_batch_timestep(timestep, h.shape[0], h.device), height, width, return_dict,
                        dict(class_labels=class_labels, cross_attention_kwargs=cross_attention_kwargs))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> torch.Tensor:
        """cond(t) is the raw timestep: each DiT block embeds it with the class label."""
        return timestep

    @staticmethod
    def block(model, block: nn.Module, h: torch.Tensor, prep: Prepared, cond) -> torch.Tensor:
        k = prep.kwargs
        return call_block(model, block, h, (None, None, None, cond, k["cross_attention_kwargs"], k["class_labels"]))

    @staticmethod
    def head(model, h: torch.Tensor, prep: Prepared, cond):
        # 3. Output: the final layer is modulated by block 0's embedder at the condition's timestep
        conditioning = model.transformer_blocks[0].norm1.emb(cond, prep.kwargs["class_labels"], hidden_dtype=h.dtype)
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        h = model.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        h = model.proj_out_2(h)
        side = int(h.shape[1] ** 0.5)
        out = _unpatchify(h, side, side, model.patch_size, model.out_channels)
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTERS: tuple[type, ...] = (PixArtAdapter, DiTAdapter)
SUPPORTED_PIPELINES = ("PixArtAlphaPipeline", "PixArtSigmaPipeline", "DiTPipeline")


def adapter_for(model: nn.Module):
    """The adapter for a transformer instance, or `UnsupportedModelError` naming what is supported."""
    for adapter in ADAPTERS:
        if isinstance(model, adapter.model_class):
            return adapter
    supported = ", ".join(a.model_class.__name__ for a in ADAPTERS) + ", " + ", ".join(SUPPORTED_PIPELINES)
    raise UnsupportedModelError(f"target={type(model).__name__} is not supported: expected one of {supported}")


def plain_forward(adapter, model, prep: Prepared):
    """The backbone without any method: every block at cond(t), then the head. Equals the stock forward."""
    cond = adapter.cond(model, prep, prep.timestep)
    h = prep.hidden
    for block in model.transformer_blocks:
        h = adapter.block(model, block, h, prep, cond)
    return adapter.head(model, h, prep, cond)

