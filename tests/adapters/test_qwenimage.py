"""Qwen-Image (`QwenImageTransformer2DModel`, `QwenImagePipeline`): the dual-stream adapter against the stock
forward, and every method on the stock pipeline with its own flow-matching scheduler and true CFG as two calls
per step (each call with its own cache state; block forwards counted per call)."""
import pytest
import torch

import ilf
from ilf import AlreadyAttachedError, CacheConfig, FeedbackConfig, UnsupportedModelError
from ilf.adapters import adapter_for, plain_forward
from ilf.adapters.qwenimage import QwenImageAdapter
from pipeline_checks import (Family, check_checkpoint_round_trip, check_counts_remove_bypass, check_half_precision_run,
                             check_layerwise_casting, check_plain_equivalence, check_t_post_grid, set_scales, spread)
from tiny_qwenimage import qwen_inputs, qwen_pipeline, qwen_scheduler, run_qwen, tiny_qwenimage

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # tests/conftest.py

N = 8
QWEN = Family(make=qwen_pipeline, run=run_qwen, time_module="time_text_embed", timestep_scale=1 / 1000,
              calls_per_step=2)
LOOP = dict(loop_start=2, loop_end=5)  # m = 4 of N = 8
CACHE = dict(location="inner", num_cached=4, interval=2)


def _stock_and_plain(model, inputs):
    with torch.no_grad():
        stock = model(**inputs, return_dict=False)[0]
        adapter = adapter_for(model)
        plain = plain_forward(adapter, model, adapter.prepare(model, **inputs, return_dict=False))[0]
    return stock, plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["mask", "no-mask", "zero-cond-t", "additional-t-cond", "lora-scale-1"])
def test_plain_forward_is_the_stock_forward(dtype, variant):
    kw = {"zero-cond-t": dict(zero_cond_t=True), "additional-t-cond": dict(use_additional_t_cond=True)}.get(variant, {})
    model = tiny_qwenimage(3, **kw).to(dtype)
    inputs = qwen_inputs(model, dtype=dtype)
    if variant == "no-mask":
        inputs["encoder_hidden_states_mask"] = None
    if variant == "zero-cond-t":  # the edit models: a reference image's tokens after the generated image's
        x = inputs["hidden_states"]
        inputs["hidden_states"] = torch.cat([x, torch.randn_like(x)], dim=1)
        inputs["img_shapes"] = [[(1, 4, 4), (1, 4, 4)]] * 2
    if variant == "additional-t-cond":
        inputs["additional_t_cond"] = torch.tensor([0, 1])
    if variant == "lora-scale-1":
        inputs["attention_kwargs"] = {"scale": 1.0}
    stock, plain = _stock_and_plain(model, inputs)
    assert plain.dtype == dtype and torch.equal(plain, stock)
    assert stock.float().std() > 0.1


def test_adapter_streams_and_timestep_units():
    model = tiny_qwenimage(2)
    assert adapter_for(model) is QwenImageAdapter
    assert QwenImageAdapter.streams == ("image", "text") and QwenImageAdapter.timestep_scale == 1 / 1000
    assert float(QwenImageAdapter.timestep_of((), {"timestep": torch.tensor([0.75])})[0]) == 750.0  # scheduler's
    adapter = adapter_for(model)
    prep = adapter.prepare(model, **qwen_inputs(model))
    image, text = prep.hidden
    assert image.shape == (2, 16, 16) and text.shape == (2, 6, 16)
    out = adapter.block(model, model.transformer_blocks[0], prep.hidden, prep, adapter.cond(model, prep, prep.timestep))
    assert out[0].shape == image.shape and out[1].shape == text.shape  # image first, both streams go on


@pytest.mark.parametrize("argument,value,match", [
    ("controlnet_block_samples", "samples", "controlnet_block_samples"),
    ("guidance", "guidance", "guidance"),
    ("attention_kwargs", {"scale": 0.5}, r"attention_kwargs=\{'scale': 0.5\}"),
])
def test_refused_inputs_name_the_argument(argument, value, match):
    model = ilf.apply_cache(tiny_qwenimage(2), CacheConfig("inner", 1, 2))
    inputs = qwen_inputs(model)
    value = {"samples": [torch.zeros(2, 16, 16)], "guidance": torch.tensor([4.0, 4.0])}.get(value, value) \
        if isinstance(value, str) else value
    inputs[argument] = value
    with pytest.raises(UnsupportedModelError, match=match):
        model(**inputs)


def test_zero_scales_equal_plain_and_t_post_moves():
    check_plain_equivalence(QWEN, N, LOOP)


def test_counts_remove_and_bypass_with_two_calls_per_step():
    check_counts_remove_bypass(QWEN, N, LOOP, CACHE)


def test_one_call_per_step_without_true_cfg():
    pipe = qwen_pipeline(N)
    config = FeedbackConfig(**LOOP, feedback_steps="outer:2")
    ilf.apply_feedback(pipe, config)
    with ilf.count_block_forwards(pipe) as counter:
        run_qwen(pipe, 4, true_cfg_scale=1.0)
    assert counter.count == ilf.expected_block_forwards(config, N, 4)


def test_checkpoint_round_trip(tmp_path):
    check_checkpoint_round_trip(QWEN, N, LOOP, tmp_path / "ckpt")


def test_t_post_between_t_and_next_timestep_for_both_calls():
    check_t_post_grid(QWEN, N, LOOP)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pipeline_follows_the_schedule(dtype):
    check_half_precision_run(QWEN, N, LOOP, dtype)


def test_layerwise_casting_inside_the_blocks():
    check_layerwise_casting(QWEN, N, LOOP)


def test_image_stream_only_feedback():
    pipe = qwen_pipeline(N)
    plain = run_qwen(pipe, 2)
    model = ilf.apply_feedback(pipe, FeedbackConfig(**LOOP, streams="image", t_post="default"))
    assert tuple(model.ilf_scales.shape) == (4,)
    set_scales(model)
    assert spread(run_qwen(pipe, 2) - plain) > 1e-4 * spread(plain)
    ilf.remove(pipe)
    model = ilf.apply_feedback(pipe, FeedbackConfig(**LOOP, t_post="default"))
    assert tuple(model.ilf_scales.shape) == (4, 2)  # one scale per loop block and stream


def _guided_run(model, scheduler, calls, steps=4):
    """A sampling run driving the bare transformer as QwenImagePipeline does (cache_context per call); the
    latents at each step are fixed, so runs with other calls per step see the same inputs. Outputs per call."""
    g = torch.Generator().manual_seed(1)
    inputs = qwen_inputs(model, batch=1)
    latents = [torch.randn(inputs["hidden_states"].shape, generator=g) for _ in range(steps)]
    negative = dict(encoder_hidden_states=torch.randn(1, 4, 16, generator=g),
                    encoder_hidden_states_mask=torch.ones(1, 4, dtype=torch.long))
    scheduler.set_timesteps(steps, mu=0.5)  # mu: the dynamic shift the pipeline computes from the image tokens
    scheduler.set_begin_index(0)
    outputs = {name: [] for name in calls}
    for i, t in enumerate(scheduler.timesteps):
        for name in calls:
            kw = {**inputs, **(negative if name == "uncond" else {})}
            kw.update(hidden_states=latents[i], timestep=(t / 1000)[None])
            with torch.no_grad(), model.cache_context(name):
                outputs[name].append(model(**kw, return_dict=False)[0])
        scheduler.step(outputs[calls[0]][-1], t, latents[i])
    return outputs


def test_each_guidance_call_keeps_its_own_cache_state():
    model = tiny_qwenimage(N)
    scheduler = qwen_scheduler()
    ilf.apply_cache(model, CacheConfig(**CACHE), scheduler=scheduler)
    both = _guided_run(model, scheduler, ["cond", "uncond"])
    for name in ("cond", "uncond"):  # the same call alone in its run: the same outputs, reused steps included
        alone = _guided_run(model, scheduler, [name])[name]
        assert all(torch.equal(a, b) for a, b in zip(both[name], alone))
    ilf.remove(model)
    plain = _guided_run(model, scheduler, ["cond", "uncond"])
    assert torch.equal(both["cond"][0], plain["cond"][0])  # step 0 computes every block
    assert spread(both["uncond"][1] - plain["uncond"][1]) > 1e-4 * spread(plain["uncond"][1])  # step 1 reuses


def test_stateful_diffusers_hook_is_refused():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = qwen_pipeline(4)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(AlreadyAttachedError, match=r"(?s)ILF.*FBCHeadBlockHook.*transformer_blocks\.0"):
        ilf.apply_feedback(pipe, FeedbackConfig(1, 2))


def test_training_config_and_registry_entry():
    from pathlib import Path

    from ilf.registry import BACKBONES
    from ilf.train import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[2] / "configs" / "train" / "qwen_image.yaml")
    spec = BACKBONES[cfg.backbone]
    n = spec.num_blocks
    assert (spec.pipeline_class, spec.transformer_class, n, spec.sampler) == (
        "QwenImagePipeline", "QwenImageTransformer2DModel", 60, "pipeline")
    assert (cfg.feedback.loop_start, cfg.feedback.loop_end + 1) == (round(8 * n / 28), round(20 * n / 28))
    # the paper's lr 1e-6 at batch 2048, square-root scaled to batch 512
    assert cfg.global_batch_size == 512 and cfg.optim.lr == pytest.approx(1e-6 * (512 / 2048) ** 0.5)
    assert cfg.accumulation_steps(8) == 64


def test_generation_keeps_the_pipelines_scheduler(monkeypatch):
    import ilf.registry
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ilf.harness.generate import build_pipeline

    monkeypatch.setattr(ilf.registry, "load_pipeline", lambda name, **kw: qwen_pipeline(2))
    pipe = build_pipeline({"backbone": "qwen-image"}, "cpu")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)


def test_bench_takes_qwen_image():
    from ilf.bench.settings import BenchSettings

    assert BenchSettings(backbone="qwen-image").validate().backbone == "qwen-image"


def test_gradient_checkpointing_path_is_the_stock_forward():
    model = tiny_qwenimage(3)
    model.enable_gradient_checkpointing()
    inputs = qwen_inputs(model)
    stock = model(**inputs, return_dict=False)[0]  # grad enabled: the stock forward's checkpointed loop
    adapter = adapter_for(model)
    plain = plain_forward(adapter, model, adapter.prepare(model, **inputs, return_dict=False))[0]
    assert plain.requires_grad and torch.equal(plain, stock)


def test_feedback_trains_through_both_streams():
    model = ilf.apply_feedback(tiny_qwenimage(N), FeedbackConfig(**LOOP))
    set_scales(model)
    model(**qwen_inputs(model)).sample.square().mean().backward()
    scales = model.ilf_scales
    assert scales.grad is not None and bool((scales.grad[:, 0] != 0).all()) and bool((scales.grad[:, 1] != 0).all())
    assert all(p.grad is not None for p in model.ilf_feedback.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.parameters())  # the backbone stays frozen
