"""The stock FluxPipeline with ILF, the cache, counting, remove, bypass and checkpoints; t_post on FLUX's grid."""
import math

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from tiny_flux import flux_prompt_embeds, run_flux, tiny_flux_pipeline

import ilf
from ilf import CacheConfig, FeedbackConfig, apply_cache, apply_feedback, count_block_forwards, expected_block_forwards
from ilf.schedule import post_feedback_timestep

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]  # floats across code paths; tiny models

N = 5  # 2 double-stream + 3 single-stream blocks
CROSSING = dict(loop_start=1, loop_end=3)  # B_1 (double) .. B_3 (single): the loop crosses the boundary


def _capture_timesteps(model, seen: list):
    """Record the timestep the time embedding receives (the model's units times 1000: the scheduler's)."""
    return model.time_text_embed.register_forward_pre_hook(lambda m, a: seen.append(float(a[0][0])))


def test_schnell_pipeline_without_guidance():
    pipe = tiny_flux_pipeline(guidance_embeds=False)
    base = run_flux(pipe, 3)
    cfg = FeedbackConfig(**CROSSING, t_post="default")
    apply_feedback(pipe, cfg)
    with count_block_forwards(pipe) as counter:
        assert torch.equal(run_flux(pipe, 3), base)
    assert counter.count == expected_block_forwards(cfg, N, 3)
    ilf.remove(pipe)
    assert torch.equal(run_flux(pipe, 3), base)


def test_pipeline_feedback_cache_remove_bypass():
    pipe = tiny_flux_pipeline()
    base = run_flux(pipe, 4)
    apply_feedback(pipe, FeedbackConfig(**CROSSING, t_post="default"))
    with count_block_forwards(pipe) as counter:
        assert torch.equal(run_flux(pipe, 4), base)  # zero scales, t_post = t: the plain backbone's ops
    assert counter.count == expected_block_forwards(FeedbackConfig(**CROSSING), N, 4) == 4 * (N + 3 + 1)
    assert counter.per_block["ilf_feedback"] == 4 and counter.per_block["single_transformer_blocks.1"] == 8
    with ilf.bypass(pipe):
        assert torch.equal(run_flux(pipe, 4), base)
    ilf.remove(pipe)
    cfg = FeedbackConfig(**CROSSING, feedback_steps="outer:2", t_post="rescale")
    apply_feedback(pipe, cfg)
    with count_block_forwards(pipe) as counter:
        out = run_flux(pipe, 4)
    assert counter.count == expected_block_forwards(cfg, N, 4)
    assert (out - base).abs().max() > 1e-3 * base.abs().max()  # t_post != t moves the output
    ilf.remove(pipe)
    cache = CacheConfig("inner", 3, 2)
    apply_cache(pipe, cache)
    with count_block_forwards(pipe) as counter:
        cached = run_flux(pipe, 4)
    assert counter.count == expected_block_forwards(cache, N, 4)
    assert torch.equal(run_flux(pipe, 4), cached)  # the residuals are reset at every run's first step
    ilf.remove(pipe)
    assert torch.equal(run_flux(pipe, 4), base)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.transformer.modules())


@pytest.mark.parametrize("streams,shape", [("all", (3, 2)), ("image", (3,))])
def test_streams_fed_back(streams, shape):
    """One scale per loop block and stream; `streams="image"` leaves the text stream the loop blocks receive
    as it is."""
    pipe = tiny_flux_pipeline()
    model = pipe.transformer
    apply_feedback(pipe, FeedbackConfig(**CROSSING, streams=streams))
    assert model.ilf_scales.shape == shape
    seen = []
    hook = model.transformer_blocks[1].register_forward_pre_hook(
        lambda m, a: seen.append((a[0].clone(), a[1].clone())))
    with torch.no_grad():
        model.ilf_scales.fill_(0.5)
        run_flux(pipe, 1)
    hook.remove()
    (img0, txt0), (img1, txt1) = seen  # first pass, then the loop re-run fed with F's streams
    assert not torch.allclose(img0, img1)
    assert torch.equal(txt0, txt1) == (streams == "image")


def test_checkpoint_round_trip(tmp_path):
    pipe = tiny_flux_pipeline()
    cfg = FeedbackConfig(**CROSSING, t_post="anneal")
    apply_feedback(pipe, cfg)
    with torch.no_grad():
        for p in pipe.transformer.ilf_feedback.parameters():
            p.add_(0.01 * torch.randn_like(p))
        pipe.transformer.ilf_scales.copy_(torch.linspace(0.1, 0.6, 6).reshape(3, 2))
    out = run_flux(pipe, 3)
    ilf.save_feedback(pipe, tmp_path)
    fresh = tiny_flux_pipeline()
    ilf.load_feedback(fresh, tmp_path)
    assert type(fresh.transformer.ilf_feedback).__name__ == "FluxSingleTransformerBlock"  # a copy of B_3
    assert torch.equal(fresh.transformer.ilf_scales, pipe.transformer.ilf_scales)
    assert torch.equal(run_flux(fresh, 3), out)


def test_true_cfg_two_calls_per_step():
    """`true_cfg_scale`: a cond and an uncond call per step, each in its own `cache_context`; both are the step's
    calls (same step index, the same t_post), and the cache keeps one set of residuals per call."""
    pipe = tiny_flux_pipeline()
    base = run_flux(pipe, 4, true_cfg_scale=2.0)
    assert not torch.equal(base, run_flux(pipe, 4))  # the uncond call matters
    cfg = FeedbackConfig(**CROSSING, feedback_steps="first:2", t_post="rescale")
    apply_feedback(pipe, cfg)
    seen = []
    hook = _capture_timesteps(pipe.transformer, seen)
    with count_block_forwards(pipe) as counter:
        run_flux(pipe, 4, true_cfg_scale=2.0)
    hook.remove()
    assert counter.count == 2 * expected_block_forwards(cfg, N, 4)  # two calls per step, each a batch of one
    ts = [float(t) for t in pipe.scheduler.timesteps]
    expected = []
    for s, t in enumerate(ts):
        call = [t] + ([post_feedback_timestep(cfg, N, t, ts[s + 1], s)] if s < 2 else [])
        expected += call + call  # cond, then uncond
    assert seen == pytest.approx(expected, rel=1e-6)
    ilf.remove(pipe)
    cache = CacheConfig("inner", 3, 2)
    apply_cache(pipe, cache)
    with count_block_forwards(pipe) as counter:
        a = run_flux(pipe, 4, true_cfg_scale=2.0)
    assert counter.count == 2 * expected_block_forwards(cache, N, 4)
    ilf.remove(pipe)
    apply_cache(pipe, CacheConfig("inner", 3, 1))  # recompute every step: the plain pipeline
    assert torch.equal(run_flux(pipe, 4, true_cfg_scale=2.0), base)
    ilf.remove(pipe)
    assert not torch.equal(a, base)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_run_follows_the_steps(dtype):
    """The pipeline rounds t to the latents' dtype before dividing by 1000; each call is still its step's call."""
    pipe = tiny_flux_pipeline().to(dtype=dtype)
    cfg = FeedbackConfig(**CROSSING, feedback_steps="first:1")
    apply_feedback(pipe, cfg)
    emb = {k: v.to(dtype) for k, v in flux_prompt_embeds().items()}
    with count_block_forwards(pipe) as counter:
        pipe(num_inference_steps=6, height=16, width=16, output_type="latent", **emb)
    assert counter.count == expected_block_forwards(cfg, N, 6)


STRATEGIES = [("uniform", "m/n"), ("rescale", "m/n"), ("rescale", "n/m"), ("anneal", "m/n")]


@pytest.mark.parametrize("t_post,ratio", STRATEGIES)
def test_t_post_on_flux_grid(t_post, ratio):
    """A 28-step FLUX.1-dev schedule with the resolution-dependent shift (mu from the image size, as the pipeline
    computes it): the model's time embedding receives t_post (in 1000ths, times 1000 inside) at every feedback
    step; with rho = m/N t_post lies between t and the next timestep, with N/m beyond it (as eq. 4 prints)."""
    pipe = tiny_flux_pipeline()
    cfg = FeedbackConfig(**CROSSING, t_post=t_post, ratio=ratio)
    apply_feedback(pipe, cfg)
    seen = []
    hook = _capture_timesteps(pipe.transformer, seen)
    run_flux(pipe, 28, size=16)
    hook.remove()
    conf = pipe.scheduler.config
    mu = calculate_shift(64, conf.base_image_seq_len, conf.max_image_seq_len, conf.base_shift, conf.max_shift)
    sigmas = np.linspace(1.0, 1 / 28, 28)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))  # FlowMatchEulerDiscreteScheduler.time_shift
    ts = [float(t) for t in pipe.scheduler.timesteps]
    np.testing.assert_allclose(ts, shifted * 1000, rtol=1e-5)
    assert ts[0] == 1000.0 and len(seen) == 56
    for s, t in enumerate(ts):
        t_next = ts[s + 1] if s + 1 < 28 else 0.0  # the flow grid ends at sigma 0
        assert seen[2 * s] == pytest.approx(t, rel=1e-6)
        got = seen[2 * s + 1]
        assert got == pytest.approx(post_feedback_timestep(cfg, N, t, t_next, s), rel=1e-6, abs=1e-4)
        if ratio == "m/n":
            assert t_next < got < t
        else:
            assert got <= t_next


def test_t_post_clamp_keeps_the_flow_grid_start():
    """A flow grid starts at t = T (sigma 1): t_post stays in [t_next, t] there, not clamped to T - 1."""
    cfg = FeedbackConfig(1, 3, t_post="uniform")
    assert post_feedback_timestep(cfg, N, 1000.0, 999.5, 0) == 999.75
    assert post_feedback_timestep(FeedbackConfig(1, 3, t_post="default"), N, 1000.0, 960.0, 0) == 1000.0
    assert post_feedback_timestep(cfg, 28, 999.0, 899.0, 0) == 949.0  # a DDPM grid as before
