"""Backbone adapters: a diffusers transformer's forward split into input, per-block calls and output head.

ILF needs three things a stock forward does not expose (METHOD.md, "A step with feedback"): `cond(t)` for an
arbitrary timestep, one block call at a given condition, and the output head at a given condition. Each
adapter re-states its model's forward in those pieces, numbered like diffusers' own (`# 1. Input`,
`# 2. Blocks`, `# 3. Output`); the plain composition of the pieces (`plain_forward`) is bit-identical to the
stock forward (tests/core/test_attach.py).

One module per architecture family: `pixart.py` (`PixArtTransformer2DModel`), `dit.py`
(`DiTTransformer2DModel`), `flux.py` (`FluxTransformer2DModel`), `sd3.py` (`SD3Transformer2DModel`), `qwenimage.py`
(`QwenImageTransformer2DModel`), `sana.py` (`SanaTransformer2DModel`), `wan.py` (`WanTransformer3DModel`);
`supported()` lists them. To support another family, add one module here that defines a class following
`Adapter` (its `model_class`, the stock `pipelines` holding it, `block_lists`, `streams`, `timestep_scale`, and
`timestep_of`, `prepare`, `cond`, `block`, `head`; optionally `check_feedback(model, config)`, raising
`ILFConfigError` for a `FeedbackConfig` the family cannot run, called by `apply_feedback`) and names it `ADAPTER`; `adapter_for` finds every module of
this package on first use. Test it against the stock forward as the shipped families are.

Blocks and streams (METHOD.md, "Multi-stream blocks"): the block sequence B_0 .. B_{N-1} is the concatenation of
the model's `block_lists` in call order (FLUX: `transformer_blocks`, then `single_transformer_blocks`). The state
a block maps is a `State`: one (B, T, D) tensor for a single-stream backbone, or a tuple of per-stream tensors
(image stream first, `streams` names them; a stream a block no longer produces is None) for a multi-stream one.
`add_states`, `sub_states` and `feed` act on either form, so the methods never look inside.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..errors import UnsupportedModelError


@dataclass
class Prepared:
    """Everything one forward call needs besides the block loop (the output of `# 1. Input`)."""

    hidden: State  # the state after `# 1. Input`: (B, T, D) tokens, or per-stream tensors, image first (FLUX, SD3)
    timestep: torch.Tensor  # (B,) the time condition the caller passed (t)
    height: int  # patch-grid height
    width: int  # patch-grid width
    return_dict: bool
    kwargs: dict[str, Any] = field(default_factory=dict)  # adapter-specific static inputs (captions, labels, masks)


State = Any  # a (B, T, D) tensor, or a tuple of per-stream (B, T_k, D_k) tensors (None: a stream that has ended)


class Adapter(Protocol):
    """One architecture family's forward in pieces (static methods; `model` is the transformer)."""

    model_class: ClassVar[type[nn.Module]]  # the diffusers transformer class it serves
    pipelines: ClassVar[tuple[str, ...]]  # the stock pipeline classes holding it as `.transformer`
    block_lists: ClassVar[tuple[str, ...]]  # the model's block `ModuleList`s, in call order
    streams: ClassVar[tuple[str, ...]]  # the state's streams, image first: ("image",) or ("image", "text")
    timestep_scale: ClassVar[float]  # the model's timestep argument per scheduler timestep unit (FLUX: 1/1000)

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The `timestep` argument of a forward call (host side, for the step lookup)."""

    @staticmethod
    def prepare(model: nn.Module, *args: Any, **kwargs: Any) -> Prepared:
        """`# 1. Input`: the forward's arguments -> embedded tokens and the static block inputs."""

    @staticmethod
    def cond(model: nn.Module, prep: Prepared, timestep: torch.Tensor) -> Any:
        """cond(t): what every block and the head are conditioned on, for a (B,) timestep."""

    @staticmethod
    def block(model: nn.Module, block: nn.Module, h: State, prep: Prepared, cond: Any) -> State:
        """`# 2. Blocks`: one block at `cond`, called through `call_block`: State -> State."""

    @staticmethod
    def head(model: nn.Module, h: State, prep: Prepared, cond: Any) -> Any:
        """`# 3. Output`: final layer at `cond` and unpatchify, returned as the stock forward returns it."""


def call_block(model: nn.Module, block: nn.Module, h: torch.Tensor, args: tuple) -> torch.Tensor:
    """One block forward, through the module's `__call__` (so forward hooks count it), with checkpointing."""
    if torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False):
        return model._gradient_checkpointing_func(block, h, *args)
    return block(h, *args)


def plain_forward(adapter: Adapter, model: nn.Module, prep: Prepared) -> Any:
    """The backbone without any method: every block at cond(t), then the head. Equals the stock forward."""
    cond = adapter.cond(model, prep, prep.timestep)
    h = prep.hidden
    for block in adapter_blocks(adapter, model):
        h = adapter.block(model, block, h, prep, cond)
    return adapter.head(model, h, prep, cond)


def adapter_blocks(adapter: Adapter, model: nn.Module) -> list[nn.Module]:
    """The block sequence B_0 .. B_{N-1}: the adapter's `block_lists` of `model`, concatenated in call order."""
    return [block for name in adapter.block_lists for block in getattr(model, name)]


def named_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(module name, block)` for B_0 .. B_{N-1} of a supported transformer, e.g. `("transformer_blocks.3", B_3)`.

    Args:
        model: a supported diffusers transformer (unwrapped).

    Returns:
        The names under `model.named_modules()` and the blocks, in call order.

    Raises:
        UnsupportedModelError: the model's class has no adapter.
    """
    return [(f"{name}.{i}", block) for name in adapter_for(model).block_lists
            for i, block in enumerate(getattr(model, name))]


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The block sequence B_0 .. B_{N-1} of a supported transformer (N = its length), in call order.

    Block indices everywhere in `ilf` (`FeedbackConfig.loop_start`/`loop_end`, cached sets, checkpoints) index this
    sequence: for FLUX, the double-stream `transformer_blocks` followed by the `single_transformer_blocks`.

    Args:
        model: a supported diffusers transformer (not a `torch.compile` wrapper).

    Returns:
        The blocks (the model's own modules) in call order.

    Raises:
        UnsupportedModelError: the model's class has no adapter.

    Example:
        ```py
        import ilf

        len(ilf.model_blocks(pipe.transformer))  # 28 for PixArt-alpha XL/2
        ```
    """
    return adapter_blocks(adapter_for(model), model)


def set_block(model: nn.Module, index: int, block: nn.Module) -> None:
    """Replace B_index in its `ModuleList` (e.g. by a compiled or instrumented block)."""
    for name in adapter_for(model).block_lists:
        blocks = getattr(model, name)
        if index < len(blocks):
            blocks[index] = block
            return
        index -= len(blocks)
    raise IndexError(f"block index out of range for {type(model).__name__}")


def _zip_states(fn, a: State, b: State) -> State:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return fn(a, b)
    return tuple(None if x is None or y is None else fn(x, y) for x, y in zip(a, b, strict=True))


def add_states(a: State, b: State) -> State:
    """a + b, stream by stream (a stream that is None in either stays None)."""
    return _zip_states(torch.add, a, b)


def sub_states(a: State, b: State) -> State:
    """a - b, stream by stream (a cached residual: a block run's output minus its input)."""
    return _zip_states(torch.sub, a, b)


def detach_state(h: State) -> State:
    """The state without autograd history."""
    if torch.is_tensor(h):
        return h.detach()
    return tuple(None if x is None else x.detach() for x in h)


def image_stream(h: State) -> torch.Tensor:
    """The image stream of a state (the tensor itself for a single-stream backbone)."""
    return h if torch.is_tensor(h) else h[0]


def feed(g: State, scales: torch.Tensor, f: State) -> State:
    """g + s * f for one inner-loop block (eq. 2): `scales` is (), or (k,) for the first k streams of a tuple.

    Args:
        g: the state entering the loop block.
        scales: s_i as a 0-d tensor (one stream) or the block's (k,) row, one scale per fed stream.
        f: the feedback block's output, the same form as `g`.

    Returns:
        The state with each fed stream k shifted by `scales[k] * f_k`; the other streams unchanged.
    """
    if torch.is_tensor(g):
        return g + scales.reshape(()) * f
    fed = scales.reshape(-1)
    out = list(g)
    for k in range(fed.shape[0]):
        if out[k] is not None and f[k] is not None:
            out[k] = out[k] + fed[k].to(out[k].dtype) * f[k]
    return tuple(out)


def batch_timestep(timestep: Any, batch_size: int, device: torch.device) -> torch.Tensor:
    """The caller's timestep (a number, 0-d, (1,) or (B,)) as a (B,) tensor."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], device=device)
    if timestep.ndim == 0:
        timestep = timestep[None]
    if timestep.shape[0] == 1 and batch_size > 1:
        timestep = timestep.expand(batch_size)
    return timestep


def unpatchify(h: torch.Tensor, height: int, width: int, p: int, c: int) -> torch.Tensor:
    """(B, height*width, p*p*c) patch tokens -> (B, c, height*p, width*p) images."""
    h = h.reshape(shape=(-1, height, width, p, p, c))
    h = torch.einsum("nhwpqc->nchpwq", h)
    return h.reshape(shape=(-1, c, height * p, width * p))


def argument(args: tuple, kwargs: dict, name: str, position: int) -> Any:
    """A forward argument given by name or at `position` (None if absent)."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


_ADAPTERS: list[Adapter] = []  # every family module's ADAPTER, loaded on first use


def adapters() -> tuple[Adapter, ...]:
    """The adapters of every family module in this package (in module-name order)."""
    if not _ADAPTERS:
        names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
        _ADAPTERS.extend(importlib.import_module(f"{__name__}.{name}").ADAPTER for name in names)
    return tuple(_ADAPTERS)


def supported() -> str:
    """What `ilf` attaches to, for error messages: the transformer classes and the stock pipelines."""
    found = adapters()
    models = ", ".join(f"a {a.model_class.__name__}" for a in found)
    pipelines = ", ".join(p for a in found for p in a.pipelines)
    return f"{models}, or a pipeline with `.transformer` and `.scheduler` ({pipelines})"


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a transformer instance.

    Args:
        model: a diffusers transformer (not a `torch.compile` wrapper: unwrap it first).

    Returns:
        The adapter whose `model_class` the model is an instance of.

    Raises:
        UnsupportedModelError: no family module serves the model's class; the message names what is supported.
    """
    for adapter in adapters():
        if isinstance(model, adapter.model_class):
            return adapter
    raise UnsupportedModelError(f"target={type(model).__name__} is not supported: expected {supported()}")
