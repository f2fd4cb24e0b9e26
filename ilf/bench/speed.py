"""Exact speed settings for `ilf bench`: torch.compile scope and mode, the SDPA backend, and which one ran.

    compile scope  none      eager
                   regional  every block `torch.compile`d in place (the method's own loop stays Python, so a
                             per-step schedule never recompiles; ILF's feedback block is compiled on its own)
                   whole     the transformer's `__call__` compiled (`model.compile`): the attached forward,
                             block loop included, traced as one graph per distinct step kind
    compile mode   torch.compile's `mode`: default | reduce-overhead (CUDA graphs) | max-autotune |
                   max-autotune-no-cudagraphs
    SDPA backend   default (PyTorch's own choice) | flash | cudnn | efficient | math: that backend first,
                   the others as fallback (`torch.nn.attention.sdpa_kernel(..., set_priority=True)`), so
                   PixArt's masked cross-attention still runs where the first choice cannot take a mask

All of these are exact (no approximation of the model): outputs differ from eager only by floating-point
rounding, which `ilf bench` measures per row (`rel_diff_vs_eager`).
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..adapters import model_blocks
from ..errors import ILFConfigError

COMPILE_SCOPES = ("none", "regional", "whole")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SDPA_BACKENDS = ("default", "flash", "cudnn", "efficient", "math")
_BACKEND_NAMES = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                  "math": "MATH"}
WHOLE_RECOMPILE_LIMIT = 64  # whole-model compile: one graph per distinct step kind and row (guards on the step)


def parse_list(value: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], name: str) -> list[str]:
    """A comma-separated option (or a list) as a list of allowed names, in order, without repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = list(dict.fromkeys(s.strip() for s in items if s.strip()))
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise ILFConfigError(name, ",".join(bad) or value, f"a comma-separated subset of {list(allowed)}")
    return items


@contextlib.contextmanager
def sdpa_backend(name: str) -> Iterator[None]:
    """Prefer SDPA backend `name` for every `F.scaled_dot_product_attention` inside (the rest as fallback)."""
    if name == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [name] + [b for b in ("flash", "cudnn", "efficient", "math") if b != name]
    backends = [getattr(SDPBackend, _BACKEND_NAMES[b]) for b in order]
    try:
        ctx = sdpa_kernel(backends, set_priority=True)
    except TypeError:  # torch < 2.6: no priority order; the first choice plus the math fallback
        ctx = sdpa_kernel([backends[0], SDPBackend.MATH])
    with ctx:
        yield


def uncompile(model: nn.Module) -> None:
    """Undo `nn.Module.compile` on the model and every submodule (back to eager calls)."""
    for m in model.modules():
        m._compiled_call_impl = None


def compile_model(model: nn.Module, scope: str, mode: str = "default", backend: str = "inductor") -> None:
    """Compile `model` in place for `scope` (see module doc); `none` leaves it eager. Same model, same weights."""
    uncompile(model)
    if scope == "none":
        return
    kwargs = compile_kwargs(mode, backend)
    if scope == "regional":
        for block in model_blocks(model):
            block.compile(**kwargs)
    elif scope == "whole":
        import torch._dynamo.config as dynamo_config

        for attr in ("recompile_limit", "cache_size_limit"):
            if getattr(dynamo_config, attr, WHOLE_RECOMPILE_LIMIT) < WHOLE_RECOMPILE_LIMIT:
                setattr(dynamo_config, attr, WHOLE_RECOMPILE_LIMIT)
        if getattr(dynamo_config, "accumulated_recompile_limit", 1 << 30) < 8 * WHOLE_RECOMPILE_LIMIT:
            dynamo_config.accumulated_recompile_limit = 8 * WHOLE_RECOMPILE_LIMIT
        model.compile(**kwargs)
    else:
        raise ILFConfigError("compile", scope, COMPILE_SCOPES)


def compile_kwargs(mode: str, backend: str) -> dict[str, Any]:
    """The keyword arguments `compile_model` passes to `torch.compile` (for compiling extra modules alike)."""
    kwargs: dict[str, Any] = dict(backend=backend, dynamic=False)
    if backend == "inductor" and mode != "default":
        kwargs["mode"] = mode
    return kwargs


def uses_cuda_graphs(scope: str, mode: str, backend: str) -> bool:
    """Whether the compiled model replays CUDA graphs (then every sampling step is marked as a new iteration)."""
    return scope != "none" and backend == "inductor" and mode in ("reduce-overhead", "max-autotune")


def unique_graphs() -> int:
    """Graphs compiled by dynamo so far in this process (a rise during timed runs would be a recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


_SDPA_OP = re.compile(r"scaled_dot_product|_efficient_attention|_flash_attention|_cudnn_attention|fmha|flash_fwd")


def _profiled(fn: Callable[[], Any], device: torch.device) -> Any:
    """The torch profiler's record of one `fn()` (CPU, plus CUDA kernels on a GPU, synchronised before it stops)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof


def attention_ops(fn: Callable[[], Any], device: torch.device) -> str:
    """The SDPA implementations `fn()` runs (aten op names seen by the profiler, e.g.
    `aten::_scaled_dot_product_flash_attention`), space-separated, sorted; "none seen" (e.g. inside a
    replayed CUDA graph), or "unavailable" if the profiler fails."""
    try:
        prof = _profiled(fn, device)
        names = {e.key for e in prof.key_averages() if _SDPA_OP.search(e.key)}
    except Exception as err:  # the profiler is a diagnostic: never fail a benchmark on it
        return f"unavailable ({type(err).__name__})"
    names = {n for n in names if n.startswith("aten::_") or "fmha" in n or "flash_fwd" in n}
    return " ".join(sorted(n[:80] for n in names)) or "none seen"


def host_and_device_work(fn: Callable[[], Any], device: torch.device) -> tuple[int | None, float | None]:
    """(host ops, device kernel seconds) of one `fn()` under the profiler: the number of top-level `aten::` op
    calls the host dispatched (deterministic for a given row and settings; it grows with any per-block host work
    a method adds) and, on a GPU, the summed self time of the device kernels (None on CPU). (None, None) if the
    profiler fails. With `seconds_median`, `device_kernel_seconds / seconds` is how busy the GPU was."""
    try:
        prof = _profiled(fn, device)
        events = prof.events()
        host = sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None
                   and getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA)
        kernel = None
        if device.type == "cuda":
            us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) or 0
                     for e in prof.key_averages())
            kernel = us / 1e6
    except Exception:  # noqa: BLE001 - the profiler is a diagnostic: never fail a benchmark on it
        return None, None
    return host, kernel


def rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over the entries finite in both (random weights can overflow); NaN if none."""
    a, b = out.detach().float(), ref.detach().float()
    ok = torch.isfinite(a) & torch.isfinite(b)
    if not bool(ok.any()):
        return float("nan")
    den = float(b[ok].norm())
    num = float((a[ok] - b[ok]).norm())
    return num / den if den > 0 else num
