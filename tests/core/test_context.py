"""Run boundaries (a new sampling run starts when the scheduler's run starts) and split guidance."""
import pytest
import torch

import ilf
from ilf import CacheConfig, FeedbackConfig
from ilf.context import RunTracker, on_run_start
from tiny import dpm, prompt_embeds, run_pipeline, tiny_pipeline, tiny_pixart
from tolerances import tiny_pipeline_tol


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # tests/conftest.py


def _latents(seed):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(model, scheduler, x, steps=10, begin=0, split=False, guidance=4.0):
    """A custom sampling loop (img2img pattern with `begin`), guidance batched or as two calls per step."""
    pe = prompt_embeds(1)
    cond, uncond = pe["prompt_embeds"], pe["negative_prompt_embeds"]
    scheduler.set_timesteps(steps)
    if begin:
        scheduler.set_begin_index(begin)
    for t in scheduler.timesteps[begin:]:
        if split:  # cond, then uncond, at the same step
            eps_c = model(x, encoder_hidden_states=cond, timestep=t[None]).sample
            eps_u = model(x, encoder_hidden_states=uncond, timestep=t[None]).sample
        else:
            both = model(torch.cat([x, x]), encoder_hidden_states=torch.cat([uncond, cond]),
                         timestep=t.expand(2)).sample
            eps_u, eps_c = both.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        x = scheduler.step(eps[:, :4], t, x).prev_sample
    return x


@pytest.mark.parametrize("method", ["cache", "ilf"])
def test_second_partial_run_equals_fresh_attach(method):
    """6-block PixArt, CacheConfig("inner", 4, 3), 10 steps, a second run from set_begin_index(4)."""
    def attach(model, scheduler):
        if method == "cache":
            ilf.apply_cache(model, CacheConfig("inner", 4, 3), scheduler=scheduler)
        else:
            ilf.apply_feedback(model, FeedbackConfig(1, 3, "alternating", t_post="rescale"), scheduler=scheduler)
            model.ilf_scales.data.fill_(0.4)

    model, scheduler = tiny_pixart(num_layers=6), dpm()
    attach(model, scheduler)
    sample(model, scheduler, _latents(1), begin=4)
    second = sample(model, scheduler, _latents(2), begin=4)
    fresh_model, fresh_scheduler = tiny_pixart(num_layers=6), dpm()
    attach(fresh_model, fresh_scheduler)
    fresh = sample(fresh_model, fresh_scheduler, _latents(2), begin=4)
    assert torch.equal(second, fresh)


def test_run_tracker_marks_each_run_start():
    scheduler = dpm()
    tracker = RunTracker(scheduler)
    seen = []
    for begin in (0, 4, 4):
        scheduler.set_timesteps(10)
        if begin:
            scheduler.set_begin_index(begin)
        for i, t in enumerate(scheduler.timesteps[begin:]):
            for _ in range(2):  # two calls per step
                ctx = tracker(t[None])
                seen.append((ctx.new_run, ctx.step_index, ctx.call_index))
            scheduler.step(torch.zeros(1, 4, 2, 2), t, torch.zeros(1, 4, 2, 2))
    starts = [s for s in seen if s[0]]
    assert starts == [(True, 0, 0), (True, 4, 0), (True, 4, 0)]
    assert seen[:4] == [(True, 0, 0), (False, 0, 1), (False, 1, 0), (False, 1, 1)]
    assert tracker(torch.tensor([999.0])) is None  # after the last step: outside a run


def test_on_run_start_fires_once_per_pipeline_call():
    pipe = tiny_pipeline("pixart-alpha", num_layers=2)
    starts = []
    handle = on_run_start(pipe.transformer, pipe, lambda ctx: starts.append((ctx.step_index, ctx.num_steps)))
    run_pipeline(pipe, 3)
    run_pipeline(pipe, 2)
    handle.remove()
    run_pipeline(pipe, 2)
    assert starts == [(0, 3), (0, 2)]


@pytest.mark.parametrize("method", ["cache", "ilf"])
def test_split_guidance_equals_batched(method):
    def attached(scheduler):
        model = tiny_pixart(num_layers=6)
        if method == "cache":
            ilf.apply_cache(model, CacheConfig("inner", 4, 3), scheduler=scheduler)
        else:
            ilf.apply_feedback(model, FeedbackConfig(1, 3, "outer:4", t_post="rescale"), scheduler=scheduler)
            model.ilf_scales.data.fill_(0.4)
        return model

    s1, s2 = dpm(), dpm()
    batched = sample(attached(s1), s1, _latents(3), steps=8)
    split = sample(attached(s2), s2, _latents(3), steps=8, split=True)
    tol = tiny_pipeline_tol(6, 8)  # batch 2 vs two batches of 1: other kernel blocking, same math
    torch.testing.assert_close(split, batched, rtol=tol, atol=tol)
    s3 = dpm()
    plain = sample(tiny_pixart(num_layers=6), s3, _latents(3), steps=8)
    assert not torch.allclose(batched, plain, atol=100 * tol)  # the method really acted


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_half_precision_rescaled_timesteps_are_found_at_their_step(dtype):
    """A pipeline casting t to the latents' dtype and passing t / 1000 (FLUX, Qwen-Image): the adapter's t * 1000
    is the step's timestep up to that dtype's rounding, and still no other timestep is taken for it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    tracker = RunTracker(scheduler)
    scheduler.set_timesteps(8)
    for i, t in enumerate(scheduler.timesteps):
        model_t = t[None].to(dtype) / 1000
        ctx = tracker(model_t * 1000)
        assert ctx is not None and ctx.step_index == i
        scheduler.step(torch.zeros(1, 4), t, torch.zeros(1, 4))
    scheduler.set_timesteps(8)  # a new run, at step 0 (t = 1000)
    assert tracker(torch.tensor([1000.0 - 60], dtype=dtype)) is None  # a direct call with some other timestep
