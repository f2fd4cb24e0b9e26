"""ILF, the cache and the accounting on the stock `WanPipeline` (tiny Wan 2.1, prompt embeddings passed in).

Wan's pipeline runs classifier-free guidance as two transformer calls per step, inside
`cache_context("cond")` and `cache_context("uncond")`: a clip costs twice one call's block forwards, and the
cache keeps one state per call.
"""
import pytest
import torch

import ilf
from ilf import (AlreadyAttachedError, CacheConfig, FeedbackConfig, apply_cache, apply_feedback, bypass,
                 count_block_forwards, expected_block_forwards, load_feedback, remove, save_feedback)
from ilf.schedule import post_feedback_timestep
from tiny_wan import TEXT_TOKENS, flow_euler, run_wan, tiny_wan_pipeline, unipc_flow
from tolerances import reduction_tol, tiny_block_reductions

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]  # floats across code paths; tiny models

N = 6  # blocks of the tiny Wan
TOKENS = 8  # latents (1, 4, 2, 4, 4) with 1x2x2 patches
SCHEDULERS = {"unipc": unipc_flow, "flow-euler": flow_euler}


def _tol(steps: int, dtype: torch.dtype = torch.float32) -> float:
    """Kernel rounding of a run of the tiny Wan (two calls per step), relative to the latents' magnitude."""
    return reduction_tol(tiny_block_reductions(16, TOKENS, N, text_tokens=TEXT_TOKENS, steps=2 * steps), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_scales_default_t_post_equal_the_plain_pipeline_and_rescale_differs(dtype):
    """Zero scales and t_post = t run the plain blocks' operations on the same inputs (g + 0 * f == g): equal.
    t_post after F moves the clip by far more than float32 rounding (checked in float32, where that is small)."""
    pipe = tiny_wan_pipeline(N, dtype=dtype)
    base = run_wan(pipe, 4).float()
    apply_feedback(pipe, FeedbackConfig(2, 4, "all", t_post="default"))
    assert torch.equal(run_wan(pipe, 4).float(), base)
    remove(pipe)
    apply_feedback(pipe, FeedbackConfig(2, 4, "all", t_post="rescale"))
    moved = (run_wan(pipe, 4).float() - base).abs().max().item()
    assert moved > (100 * _tol(4) * base.abs().max().item() if dtype == torch.float32 else 0)
    with bypass(pipe):  # the teacher: the stock forward
        assert torch.equal(run_wan(pipe, 4).float(), base)
    remove(pipe)
    assert torch.equal(run_wan(pipe, 4).float(), base)


@pytest.mark.parametrize("method", ["feedback", "cache"])
def test_remove_restores_the_stock_transformer(method):
    pipe = tiny_wan_pipeline(N)
    model = pipe.transformer
    base = run_wan(pipe, 3)  # the stock run's `cache_context` gives the model a diffusers hook registry
    keys, attrs = set(model.state_dict()), set(model.__dict__)
    if method == "feedback":
        apply_feedback(pipe, FeedbackConfig(1, 4))
        model.ilf_scales.data.fill_(0.3)
    else:
        apply_cache(pipe, CacheConfig("inner", 3, 2))
    assert not torch.allclose(run_wan(pipe, 3), base, atol=1e-4)
    remove(pipe)
    assert set(model.state_dict()) == keys and set(model.__dict__) == attrs
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(run_wan(pipe, 3), base)


@pytest.mark.parametrize("guidance_scale,calls", [(5.0, 2), (1.0, 1)])
@pytest.mark.parametrize("config", [None, FeedbackConfig(1, 4, "outer:1"), FeedbackConfig(0, 5, "all"),
                                    CacheConfig("inner", 3, 2), CacheConfig("first", 2, 3)])
def test_block_forwards_per_clip(config, guidance_scale, calls):
    """Measured == analytic per call, times the calls per step (two with guidance: cond and uncond)."""
    pipe = tiny_wan_pipeline(N)
    if isinstance(config, FeedbackConfig):
        apply_feedback(pipe, config)
    elif config is not None:
        apply_cache(pipe, config)
    with count_block_forwards(pipe) as counter:
        run_wan(pipe, 5, guidance_scale=guidance_scale)
    assert counter.count == calls * expected_block_forwards(config, N, 5)


def test_cond_and_uncond_calls_keep_their_own_cache_state(monkeypatch):
    pipe = tiny_wan_pipeline(N)
    model = apply_cache(pipe, CacheConfig("inner", 3, 2))
    method = ilf.get_attachment(pipe).method
    seen, names, reused = [], [], []
    stock_context, stock_plan = model.cache_context, method.plan

    def context(name, **kw):
        names.append(name)
        return stock_context(name, **kw)

    def plan(ctx, reference=None):
        out = stock_plan(ctx, reference)
        seen.append((names[-1], ctx.step_index, out))
        if not out[0]:  # a reusing call: the residuals its slot stored at the last recompute
            reused.append(method.deltas[out[1]])
        return out

    monkeypatch.setattr(model, "cache_context", context)
    monkeypatch.setattr(method, "plan", plan)
    run_wan(pipe, 4)
    assert seen == [(name, s, (s % 2 == 0, slot)) for s in range(4) for name, slot in (("cond", 0), ("uncond", 1))]
    cond, uncond = reused[0], reused[1]
    assert len(cond) == len(uncond) == 1 and not torch.allclose(cond[0], uncond[0])  # two prompts, two residuals


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_t_post_lies_between_t_and_the_next_timestep(scheduler):
    pipe = tiny_wan_pipeline(N, scheduler=SCHEDULERS[scheduler]())
    cfg = FeedbackConfig(1, 4, "all", t_post="rescale")
    apply_feedback(pipe, cfg)
    seen = []
    hook = pipe.transformer.condition_embedder.timesteps_proj.register_forward_pre_hook(
        lambda m, a: seen.append(float(a[0].flatten()[0])))
    run_wan(pipe, 5)
    hook.remove()
    ts = [float(t) for t in pipe.scheduler.timesteps]  # the pipeline passes these to the model unchanged
    expected = []
    for s, t in enumerate(ts):
        t_next = ts[s + 1] if s + 1 < len(ts) else 0.0
        t_post = post_feedback_timestep(cfg, N, t, t_next, s)
        assert t_next <= t_post < t
        expected += [t, t_post] * 2  # cond and uncond each: cond(t), then cond(t_post) after F
    assert seen == pytest.approx(expected)


def test_checkpoint_round_trip_into_a_fresh_pipeline(tmp_path):
    pipe = tiny_wan_pipeline(N)
    cfg = FeedbackConfig(2, 4, "outer:2", t_post="rescale")
    model = apply_feedback(pipe, cfg)
    with torch.no_grad():
        model.ilf_scales.copy_(torch.tensor([0.3, -0.2, 0.1]))
        for p in model.ilf_feedback.parameters():
            p.add_(0.01)
    out = run_wan(pipe, 4)
    save_feedback(pipe, tmp_path)
    fresh = tiny_wan_pipeline(N)
    load_feedback(fresh, tmp_path)
    assert ilf.get_attachment(fresh).config == cfg
    assert torch.equal(run_wan(fresh, 4), out)


def test_float8_layerwise_casting_around_feedback():
    """diffusers' layerwise casting on the blocks (float8 storage): F is kept in the compute dtype; zero scales
    and t_post = t give the cast pipeline's own output."""
    pipe = tiny_wan_pipeline(N)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    base = run_wan(pipe, 3)
    model = apply_feedback(pipe, FeedbackConfig(1, 3, "all", t_post="default"))
    assert next(model.ilf_feedback.parameters()).dtype == torch.float32
    torch.testing.assert_close(run_wan(pipe, 3), base, rtol=0, atol=_tol(3) * base.abs().max().item())
    model.ilf_scales.data.fill_(0.5)
    assert not torch.allclose(run_wan(pipe, 3), base, atol=1e-4)


@pytest.mark.parametrize("method", ["feedback", "cache"])
def test_diffusers_first_block_cache_is_refused(method):
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = tiny_wan_pipeline(N)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(AlreadyAttachedError, match=r"(?s)FBCHeadBlockHook.*blocks\.0"):
        if method == "feedback":
            apply_feedback(pipe, FeedbackConfig(1, 3))
        else:
            apply_cache(pipe, CacheConfig("inner", 3, 2))
    assert ilf.get_attachment(pipe) is None


def test_two_transformer_pipeline_is_refused():
    """Wan 2.2 A14B's pipeline switches to `transformer_2` below `boundary_ratio`: refused, not half-applied."""
    from tiny_wan import tiny_wan

    pipe = tiny_wan_pipeline(N)
    pipe.register_modules(transformer_2=tiny_wan(N, seed=1))
    pipe.register_to_config(boundary_ratio=0.5)
    for apply in (lambda: apply_feedback(pipe, FeedbackConfig(1, 3)), lambda: apply_cache(pipe, CacheConfig("inner", 3, 2))):
        with pytest.raises(ilf.UnsupportedModelError, match="transformer_2"):
            apply()
    assert ilf.get_attachment(pipe.transformer) is None
