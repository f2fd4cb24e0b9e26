"""Sana (`SanaTransformer2DModel`, `SanaPipeline`): the adapter against the stock forward, and every method on
the stock pipeline with its own flow DPM-Solver++ scheduler and batched classifier-free guidance."""
import pytest
import torch

import ilf
from ilf import AlreadyAttachedError, CacheConfig, FeedbackConfig, UnsupportedModelError
from ilf.adapters import adapter_for, plain_forward
from ilf.adapters.sana import SanaAdapter
from pipeline_checks import (Family, check_checkpoint_round_trip, check_counts_remove_bypass, check_half_precision_run,
                             check_layerwise_casting,
                             check_plain_equivalence, check_t_post_grid)
from tiny_sana import run_sana, sana_inputs, sana_pipeline, tiny_sana

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # tests/conftest.py

N = 8
SANA = Family(make=sana_pipeline, run=run_sana, time_module="time_embed")
LOOP = dict(loop_start=2, loop_end=5)  # m = 4 of N = 8
CACHE = dict(location="inner", num_cached=4, interval=2)


def _stock_and_plain(model, inputs):
    with torch.no_grad():
        stock = model(**inputs, return_dict=False)[0]
        adapter = adapter_for(model)
        plain = plain_forward(adapter, model, adapter.prepare(model, **inputs, return_dict=False))[0]
    return stock, plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["masks", "guidance", "self-mask", "attention-kwargs"])
def test_plain_forward_is_the_stock_forward(dtype, variant):
    kw = dict(guidance_embeds=True) if variant == "guidance" else {}
    model = tiny_sana(3, **kw).to(dtype)
    inputs = sana_inputs(model, dtype=dtype)
    if variant == "guidance":  # the guidance-distilled variant (SANA-Sprint) embeds the guidance scale
        inputs["guidance"] = torch.tensor([4.5, 4.5])
    if variant == "self-mask":
        inputs["attention_mask"] = torch.ones(2, 64, dtype=torch.long)
    if variant == "attention-kwargs":
        inputs["attention_kwargs"] = {"scale": 1.0}  # as SanaPipeline passes `attention_kwargs` through
    stock, plain = _stock_and_plain(model, inputs)
    assert plain.dtype == dtype and torch.equal(plain, stock)
    assert stock.float().std() > 0.1


def test_adapter_is_found_and_timesteps_are_the_schedulers():
    model = tiny_sana(2)
    assert adapter_for(model) is SanaAdapter and SanaAdapter.timestep_scale == 1.0
    assert model.config.timestep_scale == 1.0  # SanaPipeline passes t * timestep_scale
    assert ilf.model_blocks(model) == list(model.transformer_blocks)


@pytest.mark.parametrize("argument,value,match", [
    ("controlnet_block_samples", "samples", "controlnet_block_samples"),
    ("attention_kwargs", {"scale": 0.5}, r"attention_kwargs=\{'scale': 0.5\}"),
])
def test_refused_inputs_name_the_argument(argument, value, match):
    model = ilf.apply_cache(tiny_sana(2), CacheConfig("inner", 1, 2))
    inputs = sana_inputs(model)
    if value == "samples":
        value = (torch.zeros(2, 64, 16),)
    with pytest.raises(UnsupportedModelError, match=match):
        model(**inputs, **{argument: value})


def test_zero_scales_equal_plain_and_t_post_moves():
    check_plain_equivalence(SANA, N, LOOP)


def test_counts_remove_and_bypass():
    check_counts_remove_bypass(SANA, N, LOOP, CACHE)


def test_checkpoint_round_trip(tmp_path):
    check_checkpoint_round_trip(SANA, N, LOOP, tmp_path / "ckpt")


def test_t_post_between_t_and_next_timestep():
    check_t_post_grid(SANA, N, LOOP)


def test_layerwise_casting_inside_the_blocks():
    check_layerwise_casting(SANA, N, LOOP)


def test_decoded_images_follow_the_plain_pipeline():
    pipe = sana_pipeline(N)
    plain = run_sana(pipe, 2, output_type="pt")
    ilf.apply_feedback(pipe, FeedbackConfig(**LOOP, t_post="default"))
    assert torch.equal(run_sana(pipe, 2, output_type="pt"), plain)


@pytest.mark.parametrize("method", ["ilf", "cache"])
def test_stateful_diffusers_hook_is_refused(method):
    from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    pipe = sana_pipeline(4)
    config = PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                             current_timestep_callback=lambda: 500)
    apply_pyramid_attention_broadcast(pipe.transformer, config)
    with pytest.raises(AlreadyAttachedError, match=r"(?s)PyramidAttentionBroadcastHook.*transformer_blocks\.0"):
        if method == "ilf":
            ilf.apply_feedback(pipe, FeedbackConfig(1, 2))
        else:
            ilf.apply_cache(pipe, CacheConfig("inner", 2, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pipeline_follows_the_schedule(dtype):
    check_half_precision_run(SANA, N, LOOP, dtype)


def test_training_config_and_registry_entry():
    from pathlib import Path

    from ilf.registry import BACKBONES
    from ilf.train import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[2] / "configs" / "train" / "sana_1600m.yaml")
    spec = BACKBONES[cfg.backbone]
    n = spec.num_blocks
    assert (spec.pipeline_class, spec.transformer_class, n, spec.sampler) == ("SanaPipeline", "SanaTransformer2DModel",
                                                                              20, "pipeline")
    assert (cfg.feedback.loop_start, cfg.feedback.loop_end + 1) == (round(8 * n / 28), round(20 * n / 28))
    assert (cfg.optim.lr, cfg.global_batch_size, cfg.epochs) == (1e-6, 2048, 5)  # paper Sec. 4.1, t2i
    assert cfg.accumulation_steps(8) == 16


def test_gradient_checkpointing_path_is_the_stock_forward():
    model = tiny_sana(3)
    model.enable_gradient_checkpointing()
    inputs = sana_inputs(model)
    stock = model(**inputs, return_dict=False)[0]  # grad enabled: the stock forward's checkpointed loop
    adapter = adapter_for(model)
    plain = plain_forward(adapter, model, adapter.prepare(model, **inputs, return_dict=False))[0]
    assert plain.requires_grad and torch.equal(plain, stock)


def test_training_takes_the_backbone_and_asks_for_its_weights():
    from ilf.errors import MissingAssetError
    from ilf.train.backbone import load_backbone

    with pytest.raises(MissingAssetError, match="ilf prefetch --backbone sana-1600m-1024"):
        load_backbone("sana-1600m-1024")  # trainable (tests/train/test_image_flow_training.py); no weights here


def test_bench_refuses_the_architectures_it_builds_no_inputs_for():
    from ilf.bench.settings import BenchSettings

    with pytest.raises(ilf.ILFConfigError, match="backbone='sana-1600m-1024'.*pixart-alpha-512"):
        BenchSettings(backbone="sana-1600m-1024").validate()
