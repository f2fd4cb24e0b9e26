"""Checks every architecture family's stock pipeline passes with the methods attached (tests/adapters/).

A `Family` names how to build the family's tiny stock pipeline and run it once; the functions below are the
checks of each adapter test: the plain-equivalence invariant, counts, remove, bypass, checkpoints, t_post on the
scheduler's grid and diffusers' hooks around ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

import ilf
from ilf import CacheConfig, FeedbackConfig


@dataclass
class Family:
    """A family's tiny pipeline: `make(num_layers, **model_kw)` builds it, `run(pipe, steps, **call_kw)` runs it."""

    make: Callable[..., Any]
    run: Callable[..., torch.Tensor]
    time_module: str  # the transformer's time-embedding module: its first argument is the timestep cond(t) uses
    timestep_scale: float = 1.0  # model timestep units per scheduler unit
    calls_per_step: int = 1  # transformer calls per step (true CFG as two calls: 2)


def set_scales(model: Any, value: float = 0.3) -> None:
    """Nonzero scales, alternating sign, so F's output reaches the result."""
    with torch.no_grad():
        s = model.ilf_scales
        signs = torch.where(torch.arange(s.shape[0]) % 2 == 0, 1.0, -1.0).reshape(-1, *([1] * (s.ndim - 1)))
        s.copy_(value * signs.expand_as(s))


def spread(x: torch.Tensor) -> float:
    return float(x.float().abs().max())


def check_plain_equivalence(fam: Family, num_layers: int, config: dict, steps: int = 3) -> None:
    """All scales 0 and t_post="default": exactly the plain pipeline; the same ILF with t_post="rescale" differs."""
    pipe = fam.make(num_layers)
    plain = fam.run(pipe, steps)
    ilf.apply_feedback(pipe, FeedbackConfig(**config, t_post="default"))
    assert torch.equal(fam.run(pipe, steps), plain)  # g + 0 * f == g: the same block computations
    ilf.remove(pipe)
    ilf.apply_feedback(pipe, FeedbackConfig(**config, t_post="rescale"))
    moved = fam.run(pipe, steps)
    assert spread(moved - plain) > 1e-3 * spread(plain)  # blocks after F at t_post != t
    ilf.remove(pipe)
    assert torch.equal(fam.run(pipe, steps), plain)


def check_counts_remove_bypass(fam: Family, num_layers: int, feedback: dict, cache: dict, steps: int = 4) -> None:
    """Measured block forwards == expected per image (times the calls per step), `remove` and `bypass` plain."""
    pipe = fam.make(num_layers)
    plain = fam.run(pipe, steps)
    with ilf.count_block_forwards(pipe) as counter:
        fam.run(pipe, steps)
    assert counter.count == ilf.expected_block_forwards(None, num_layers, steps) * fam.calls_per_step
    for config in (FeedbackConfig(**feedback), CacheConfig(**cache)):
        if isinstance(config, FeedbackConfig):
            ilf.apply_feedback(pipe, config)
            set_scales(pipe.transformer)
        else:
            ilf.apply_cache(pipe, config)
        with ilf.count_block_forwards(pipe) as counter:
            out = fam.run(pipe, steps)
        assert counter.count == ilf.expected_block_forwards(config, num_layers, steps) * fam.calls_per_step
        assert counter.count != ilf.expected_block_forwards(None, num_layers, steps) * fam.calls_per_step
        assert spread(out - plain) > 1e-4 * spread(plain)
        with ilf.bypass(pipe):
            assert torch.equal(fam.run(pipe, steps), plain)
        ilf.remove(pipe)
        assert torch.equal(fam.run(pipe, steps), plain)


def check_checkpoint_round_trip(fam: Family, num_layers: int, feedback: dict, directory: Any, steps: int = 3) -> None:
    """save_feedback / load_feedback: a fresh pipeline with the loaded F and scales gives the same output."""
    src = fam.make(num_layers)
    model = ilf.apply_feedback(src, FeedbackConfig(**feedback))
    set_scales(model)
    with torch.no_grad():
        for p in model.ilf_feedback.parameters():
            p.add_(0.01 * torch.randn_like(p))  # trained F: no longer a copy of block e
    expected = fam.run(src, steps)
    ilf.save_feedback(src, directory)
    dst = fam.make(num_layers)
    ilf.load_feedback(dst, directory)
    assert torch.equal(fam.run(dst, steps), expected)


def record_timesteps(model: Any, fam: Family) -> tuple[list[float], Any]:
    """The timesteps the time embedding is called with (scheduler units), and the hook handle."""
    seen: list[float] = []

    def hook(module, args, kwargs):
        t = args[0] if args else kwargs["timestep"]
        seen.append(float(t.flatten()[0].double()) / fam.timestep_scale)

    return seen, getattr(model, fam.time_module).register_forward_pre_hook(hook, with_kwargs=True)


def check_t_post_grid(fam: Family, num_layers: int, feedback: dict, steps: int = 4) -> None:
    """Every step with feedback conditions the blocks after F on t_post in (t_next, t) (flow-matching grid)."""
    pipe = fam.make(num_layers)
    model = ilf.apply_feedback(pipe, FeedbackConfig(**feedback, feedback_steps="all", t_post="rescale"))
    seen, handle = record_timesteps(model, fam)
    fam.run(pipe, steps)
    handle.remove()
    times = [float(t) for t in pipe.scheduler.timesteps]
    assert len(seen) == 2 * steps * fam.calls_per_step  # cond(t), then cond(t_post), per call
    rel = 4 * torch.finfo(torch.float32).eps * 1000
    for call in range(steps * fam.calls_per_step):
        i = call // fam.calls_per_step
        t, t_next = times[i], times[i + 1] if i + 1 < steps else 0.0
        t_seen, t_post = seen[2 * call], seen[2 * call + 1]
        assert abs(t_seen - t) <= rel
        assert t_next - rel <= t_post < t - 1e-3, (i, t, t_post, t_next)


def upcast_copy(pipe: Any, cast_model: torch.nn.Module, compute: torch.dtype) -> Any:
    """A deep copy of the uncast `pipe` holding `cast_model`'s stored (e.g. float8) weights upcast to `compute`: what
    diffusers' layerwise-casting hooks compute with."""
    import copy

    ref = copy.deepcopy(pipe)
    with torch.no_grad():
        for (_, p), (_, q) in zip(ref.transformer.named_parameters(), cast_model.named_parameters()):
            p.copy_(q.to(compute))
    return ref


def check_layerwise_casting(fam: Family, num_layers: int, feedback: dict, steps: int = 2) -> None:
    """diffusers' float8 layerwise casting inside the blocks keeps working under ILF (zero scales: exactly plain)."""
    pipe = fam.make(num_layers)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    plain = fam.run(pipe, steps)
    ilf.apply_feedback(pipe, FeedbackConfig(**feedback, t_post="default"))
    assert torch.equal(fam.run(pipe, steps), plain)
    assert all(p.dtype == torch.float32 for p in pipe.transformer.ilf_feedback.parameters())
    ilf.remove(pipe)
    assert torch.equal(fam.run(pipe, steps), plain)


def check_half_precision_run(fam: Family, num_layers: int, feedback: dict, dtype: torch.dtype, steps: int = 4) -> None:
    """A transformer in `dtype`: each call is found at its step (the feedback schedule holds, counted), and zero
    scales with t_post="default" give exactly the plain pipeline."""
    pipe = fam.make(num_layers)
    pipe.transformer.to(dtype)
    plain = fam.run(pipe, steps)
    config = FeedbackConfig(**feedback, feedback_steps="outer:2", t_post="default")
    ilf.apply_feedback(pipe, config)
    with ilf.count_block_forwards(pipe) as counter:
        out = fam.run(pipe, steps)
    assert counter.count == ilf.expected_block_forwards(config, num_layers, steps) * fam.calls_per_step
    assert torch.equal(out, plain)
    ilf.remove(pipe)
    config = FeedbackConfig(**feedback, feedback_steps="outer:2", t_post="rescale")
    model = ilf.apply_feedback(pipe, config)
    seen, handle = record_timesteps(model, fam)
    fam.run(pipe, steps)
    handle.remove()
    # cond(t) once per call on the steps without feedback, cond(t) and cond(t_post) on the 2 with it
    assert len(seen) == (steps + 2) * fam.calls_per_step
