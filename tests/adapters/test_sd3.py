"""SD3 / SD3.5 (`SD3Transformer2DModel`, `StableDiffusion3Pipeline`): the adapter against the stock forward, and
ILF, the cache, counting, removing, bypassing and checkpoints on the stock pipeline with flow matching."""
from pathlib import Path

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

import ilf
from ilf import AlreadyAttachedError, CacheConfig, FeedbackConfig, ILFConfigError
from ilf.adapters import adapter_for, plain_forward
from ilf.adapters.sd3 import skip_layer_guidance_forwards, skip_layer_guidance_steps
from tiny_sd3 import TEXT_TOKENS, run_sd3, sd3_inputs, tiny_sd3, tiny_sd3_pipeline
from tolerances import reduction_tol, tiny_block_reductions

pytestmark = pytest.mark.numerics  # compares floats across code paths

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = {"medium": dict(dual=(0, 1)), "large": dict(dual=())}  # SD3.5 medium: dual attention in the first blocks


def _tol(blocks: int, steps: int) -> float:
    """Kernel rounding of a tiny SD3 run: width 16, 64 image + 6 text tokens in joint attention."""
    return reduction_tol(tiny_block_reductions(16, 64 + TEXT_TOKENS, blocks, steps=steps) + [9 * 8] * 4)


def _stock(model, **inputs):
    with torch.no_grad():
        return model(**inputs)


def _plain(model, **inputs):
    adapter = adapter_for(model)
    with torch.no_grad():
        return plain_forward(adapter, model, adapter.prepare(model, **inputs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extra", [
    {},
    {"joint_attention_kwargs": {}},
    {"joint_attention_kwargs": {"scale": 1.0}},
    {"skip_layers": [1, 3]},  # skip-layer guidance: blocks 1 and 3 not called
    {"skip_layers": [5]},  # the context_pre_only last block
    {"return_dict": False},
])
def test_plain_forward_equals_stock(dtype, shape, extra):
    model = tiny_sd3(6, **SHAPES[shape]).to(dtype)
    inputs = sd3_inputs(dtype=dtype) | extra
    ref, out = _stock(model, **inputs), _plain(model, **inputs)
    assert type(out) is type(ref)
    assert torch.equal(out[0], ref[0])
    assert ref[0].abs().max() > 0


def test_joint_attention_kwargs_are_not_mutated_and_lora_scale_is_taken_out():
    model = tiny_sd3(4)
    kwargs = {"scale": 0.5}  # no LoRA layers: the stock forward drops it too
    ref = _stock(model, **sd3_inputs(), joint_attention_kwargs=dict(kwargs)).sample
    out = _plain(model, **sd3_inputs(), joint_attention_kwargs=kwargs).sample
    assert torch.equal(out, ref) and kwargs == {"scale": 0.5}


@pytest.mark.parametrize("extra,field", [
    ({"block_controlnet_hidden_states": [torch.zeros(2, 16, 16)]}, "block_controlnet_hidden_states"),
    ({"joint_attention_kwargs": {"ip_adapter_image_embeds": torch.zeros(2, 4)}}, "joint_attention_kwargs"),
])
def test_unsupported_inputs_are_refused(extra, field):
    model = tiny_sd3(4)
    ilf.apply_cache(model, CacheConfig("inner", 2, 2))
    with pytest.raises(ILFConfigError, match=field):
        _stock(model, **sd3_inputs(), **extra)


def test_loop_ending_at_the_context_pre_only_block_is_refused():
    pipe = tiny_sd3_pipeline(6)
    assert pipe.transformer.transformer_blocks[5].context_pre_only
    with pytest.raises(ILFConfigError, match=r"loop_end.*context_pre_only"):
        ilf.apply_feedback(pipe, FeedbackConfig(2, 5))
    assert ilf.get_attachment(pipe) is None and all(p.requires_grad for p in pipe.transformer.parameters())
    model = ilf.apply_feedback(pipe, FeedbackConfig(2, 4))  # F = a copy of a joint block: both streams
    assert not model.ilf_feedback.context_pre_only and model.ilf_scales.shape == (3, 2)


def test_state_is_image_then_text_and_the_last_block_ends_the_text_stream():
    model = tiny_sd3(4)
    adapter = adapter_for(model)
    prep = adapter.prepare(model, **sd3_inputs())
    cond = adapter.cond(model, prep, prep.timestep)
    h = prep.hidden
    assert adapter.streams == ("image", "text") and h[0].shape == (2, 16, 16) and h[1].shape == (2, TEXT_TOKENS, 16)
    for block in ilf.model_blocks(model)[:-1]:
        h = adapter.block(model, block, h, prep, cond)
        assert h[1] is not None
    assert adapter.block(model, ilf.model_blocks(model)[-1], h, prep, cond)[1] is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_pipeline_feedback_invariant_remove_and_bypass(dtype):
    pipe = tiny_sd3_pipeline(6).to(dtype)
    base = run_sd3(pipe, 4)
    model = ilf.apply_feedback(pipe, FeedbackConfig(1, 3, t_post="default"))
    same = run_sd3(pipe, 4)
    if dtype == torch.float32:
        tol = _tol(6, 4)
        torch.testing.assert_close(same, base, rtol=tol, atol=tol)
    else:  # the same ops in the same order: g + 0 * f == g exactly
        assert torch.equal(same, base)
    ilf.remove(pipe)
    ilf.apply_feedback(pipe, FeedbackConfig(1, 3, t_post="rescale"))
    moved = run_sd3(pipe, 4)
    assert (moved.float() - base.float()).abs().max() > 100 * _tol(6, 4) * base.float().abs().max()
    with ilf.bypass(pipe):
        assert torch.equal(run_sd3(pipe, 4), base)
    ilf.remove(pipe)
    assert torch.equal(run_sd3(pipe, 4), base) and "forward" not in model.__dict__


def _transformer_calls(pipe):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(k["hidden_states"].shape[0]),
                                                        with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("config", [None, FeedbackConfig(1, 3, "outer:2"), FeedbackConfig(0, 4, "all", streams="image"),
                                    CacheConfig("inner", 3, 2), CacheConfig("last", 2, 3)])
def test_measured_block_forwards_equal_analytic_with_batched_guidance(config):
    pipe = tiny_sd3_pipeline(6)
    if isinstance(config, FeedbackConfig):
        ilf.apply_feedback(pipe, config)
    elif config is not None:
        ilf.apply_cache(pipe, config)
    calls, handle = _transformer_calls(pipe)
    with ilf.count_block_forwards(pipe) as counter:
        run_sd3(pipe, 5)
    handle.remove()
    assert calls == [2] * 5  # guidance: one batched call [uncond, cond] per step
    assert counter.count == ilf.expected_block_forwards(config, 6, 5)
    if isinstance(config, FeedbackConfig):
        assert counter.per_block["ilf_feedback"] == len(ilf.resolve_feedback_steps(config.feedback_steps, 5))


@pytest.mark.parametrize("config", [None, FeedbackConfig(1, 3, "all"), FeedbackConfig(1, 3, "first:2"),
                                    CacheConfig("inner", 3, 2), CacheConfig("first", 4, 3)])
def test_skip_layer_guidance_runs_and_counts(config):
    skip, start, stop, steps = [2, 3], 0.1, 0.7, 6
    pipe = tiny_sd3_pipeline(6)
    base = None
    if config is not None:
        base = run_sd3(pipe, steps, skip_guidance_layers=skip, skip_layer_guidance_start=start,
                       skip_layer_guidance_stop=stop)
        (ilf.apply_feedback if isinstance(config, FeedbackConfig) else ilf.apply_cache)(pipe, config)
    calls, handle = _transformer_calls(pipe)
    with ilf.count_block_forwards(pipe) as counter:
        out = run_sd3(pipe, steps, skip_guidance_layers=skip, skip_layer_guidance_start=start,
                      skip_layer_guidance_stop=stop)
    handle.remove()
    slg = skip_layer_guidance_steps(steps, start, stop)
    assert slg == [1, 2, 3, 4] and calls.count(1) == len(slg)  # one extra cond-only call per guided step
    extra = skip_layer_guidance_forwards(config, 6, steps, skip, start, stop)
    assert counter.count == ilf.expected_block_forwards(config, 6, steps) + extra
    if base is not None:
        with ilf.bypass(pipe):
            assert torch.equal(run_sd3(pipe, steps, skip_guidance_layers=skip, skip_layer_guidance_start=start,
                                       skip_layer_guidance_stop=stop), base)
        assert not torch.equal(out, base) or isinstance(config, FeedbackConfig)


def test_skip_layer_guidance_with_zero_feedback_equals_plain_run():
    kw = dict(skip_guidance_layers=[2], skip_layer_guidance_start=0.1, skip_layer_guidance_stop=0.7)
    pipe = tiny_sd3_pipeline(6)
    base = run_sd3(pipe, 6, **kw)
    ilf.apply_feedback(pipe, FeedbackConfig(1, 3, t_post="default"))
    tol = _tol(6, 12)
    torch.testing.assert_close(run_sd3(pipe, 6, **kw), base, rtol=tol, atol=tol)


def test_t_post_between_t_and_next_timestep_on_the_28_step_flow_grid():
    """The blocks after F get t_post in the model's units, which are the scheduler's: t_next <= t_post <= t."""
    pipe = tiny_sd3_pipeline(4)
    for t_post in ("uniform", "rescale", "anneal"):
        seen: list[float] = []
        handle = pipe.transformer.time_text_embed.register_forward_pre_hook(
            lambda m, args: seen.append(float(args[0].flatten()[0])))
        ilf.apply_feedback(pipe, FeedbackConfig(0, 2, t_post=t_post))
        run_sd3(pipe, 28)
        ilf.remove(pipe)
        handle.remove()
        grid = [float(t) for t in pipe.scheduler.timesteps] + [0.0]
        assert len(grid) == 29 and grid[0] == 1000.0 and len(seen) == 2 * 28  # cond(t), cond(t_post) per step
        for i in range(28):
            t, t_post_value = seen[2 * i], seen[2 * i + 1]
            assert t == pytest.approx(grid[i], abs=1e-3)
            assert grid[i + 1] <= t_post_value < t, (t_post, i, grid[i], t_post_value, grid[i + 1])


def test_checkpoint_round_trip(tmp_path):
    pipe = tiny_sd3_pipeline(6)
    model = ilf.apply_feedback(pipe, FeedbackConfig(1, 3, t_post="rescale"))
    with torch.no_grad():
        model.ilf_scales.copy_(torch.tensor([[0.2, -0.1], [0.3, 0.05], [-0.2, 0.1]]))
        next(model.ilf_feedback.parameters()).add_(0.01)
    out = run_sd3(pipe, 4)
    ilf.save_feedback(pipe, tmp_path / "ckpt")
    ilf.remove(pipe)
    ilf.load_feedback(pipe, tmp_path / "ckpt")
    assert torch.equal(run_sd3(pipe, 4), out)
    assert ilf.get_attachment(pipe).config.streams == "all"


def test_image_stream_only_feeds_the_image_stream():
    model = tiny_sd3(6)
    inputs = sd3_inputs()
    ilf.apply_feedback(model, FeedbackConfig(1, 3, streams="image"))
    assert model.ilf_scales.shape == (3,)
    with torch.no_grad():
        model.ilf_scales.fill_(0.4)
        image_only = model(**inputs).sample
    ilf.remove(model)
    ilf.apply_feedback(model, FeedbackConfig(1, 3, streams="all"))
    with torch.no_grad():
        model.ilf_scales[:, 0] = 0.4  # the same image scales, zero text scales: the same computation
        same = model(**inputs).sample
        model.ilf_scales[:, 1] = 0.4
        both = model(**inputs).sample
    assert torch.equal(same, image_only)
    assert not torch.allclose(both, image_only, atol=1e-4)


def test_layerwise_casting_around_ilf_and_a_block_cache_hook_refused():
    pipe = tiny_sd3_pipeline(4)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    ilf.apply_feedback(pipe, FeedbackConfig(1, 2))
    with ilf.count_block_forwards(pipe) as counter:
        assert torch.isfinite(run_sd3(pipe, 3)).all()
    assert counter.count == ilf.expected_block_forwards(FeedbackConfig(1, 2), 4, 3)
    assert ilf.get_attachment(pipe).method.feedback.norm1.linear.weight.dtype == torch.float32
    ilf.remove(pipe)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(AlreadyAttachedError, match=r"FBCHeadBlockHook.*transformer_blocks\.0"):
        ilf.apply_feedback(pipe, FeedbackConfig(1, 2))


# Real SD3.5 architectures (meta device) and the registry
SD35 = {"sd35-medium": (24, 2_243_171_520, 2_469_663_936, (7, 16)),  # + pos_embed buffer: the published 2.5B
        "sd35-large": (38, 8_056_627_520, 8_146_280_768, (11, 26))}  # 8.1B


@pytest.mark.parametrize("name", SD35)
def test_sd35_real_configs_and_default_loop(name):
    from ilf.registry import build_transformer
    from ilf.train.config import load_train_config

    n, params, stored, (b, e) = SD35[name]
    model = build_transformer(name)
    assert len(ilf.model_blocks(model)) == n and model.transformer_blocks[-1].context_pre_only
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(v.numel() for v in model.state_dict().values()) == stored
    assert (b, e) == (round(8 * n / 28), round(20 * n / 28) - 1)  # docs/METHOD.md: 8..19 of 28 scaled to N
    config = load_train_config(Path(__file__).parents[2] / f"configs/train/{name.replace('-', '_')}.yaml")
    assert (config.feedback.loop_start, config.feedback.loop_end) == (b, e) and config.global_batch_size == 2048
    ilf.apply_feedback(model, config.feedback)
    block = sum(p.numel() for p in model.transformer_blocks[e].parameters())
    assert sum(p.numel() for p in ilf.feedback_parameters(model)) == block + 2 * (e - b + 1)  # F + (m, 2) scales


@pytest.mark.parametrize("name", SD35)
def test_sd35_offline_error_names_prefetch_hf_download_and_the_gate(name, monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as c

    from ilf.cli import main

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = ilf.BACKBONES[name].repo_id
    assert repo.startswith("stabilityai/stable-diffusion-3.5-") and ilf.BACKBONES[name].gated
    with pytest.raises(ilf.MissingAssetError) as err:
        ilf.load_pipeline(name)
    msg = str(err.value)
    assert f"ilf prefetch --backbone {name}" in msg and f"hf download {repo} --cache-dir " in msg
    assert "gated" in msg and "hf auth login" in msg
    assert main(["prefetch", "--backbone", name, "--dry-run"]) == 0
    assert f"hf download {repo} --cache-dir" in capsys.readouterr().out
