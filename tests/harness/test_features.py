"""Feature-change recording (paper Figs. 3/4): shapes, definitions, cache reconstruction check, safe storage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

import ilf
from ilf import CacheConfig
from ilf.harness.features import feature_change, load_feature_change, record_feature_distances, save_feature_change
from tolerances import tiny_pipeline_tol

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture

STEPS = 6


def tiny_pipe() -> tuple[PixArtAlphaPipeline, dict]:
    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(num_layers=4, attention_head_dim=8, num_attention_heads=2, sample_size=8,
                                  in_channels=4, out_channels=8, caption_channels=16, cross_attention_dim=16,
                                  norm_type="ada_norm_single")
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=tr,
                               scheduler=DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    emb, mask = torch.randn(2, 5, 16, generator=g), torch.ones(2, 5)
    kwargs = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None,
                  negative_prompt_embeds=torch.zeros_like(emb), negative_prompt_attention_mask=mask,
                  num_inference_steps=STEPS, guidance_scale=4.0, output_type="latent", use_resolution_binning=False)
    return pipe, kwargs


def test_feature_change_definitions():
    pipe, kwargs = tiny_pipe()
    cache = CacheConfig(location="inner", num_cached=2, interval=2)  # blocks 1, 2 skipped on odd steps
    out = feature_change(pipe, kwargs, cache)
    assert ilf.get_attachment(pipe) is None  # the cache is removed again
    for k in ("baseline_over_steps", "cache_over_steps", "baseline_over_blocks", "cache_over_blocks"):
        assert out[k].shape == (4, STEPS)
    assert np.all(out["baseline_over_steps"][:, 0] == 0) and np.all(out["cache_over_steps"][:, 0] == 0)
    assert np.all(out["baseline_over_blocks"][0] == 0)
    for fig in ("over_steps", "over_blocks"):  # normalised by the max over both panels
        peak = max(out[f"baseline_{fig}_norm"].max(), out[f"cache_{fig}_norm"].max())
        assert peak == pytest.approx(1.0)
    # step 0 runs every block: the cache's first-step features equal the baseline's
    tol = tiny_pipeline_tol(4, STEPS)  # the same ops through the cache's loop: rounding only
    np.testing.assert_allclose(out["cache_over_blocks"][:, 0], out["baseline_over_blocks"][:, 0], rtol=tol)
    # on a skipped step a cached block passes input + residual of step s-1, so its change since step 0
    # equals its input's change (block i-1's): D3[i, 1] == D3[i-1, 1] for i in {1, 2}, not so in the baseline
    d3 = out["cache_over_steps"]
    assert d3[1, 1] == pytest.approx(d3[0, 1], rel=tol) and d3[2, 1] == pytest.approx(d3[0, 1], rel=tol)
    assert out["baseline_over_steps"][1, 1] != pytest.approx(out["baseline_over_steps"][0, 1], rel=10 * tol)
    # a cache that recomputes every step is the baseline
    ilf.apply_cache(pipe, CacheConfig(location="inner", num_cached=2, interval=1))
    try:
        same = record_feature_distances(pipe, kwargs)
    finally:
        ilf.remove(pipe)
    np.testing.assert_allclose(same["over_steps"], out["baseline_over_steps"], rtol=tol, atol=tol)


class _WrongSkip:
    """A 'cache' that passes its input on unchanged when it skips (not the paper's input + residual)."""

    name, config = "cache", None  # poses as the cache so that recording is attempted

    def start_run(self, ctx):
        pass

    def __call__(self, adapter, model, prep, ctx):
        cond = adapter.cond(model, prep, prep.timestep)
        h = prep.hidden
        for i, block in enumerate(model.transformer_blocks):
            if ctx is not None and ctx.step_index % 2 == 1 and i in (1, 2):
                continue
            h = adapter.block(model, block, h, prep, cond)
        return adapter.head(model, h, prep, cond)


def test_reconstruction_is_checked():
    pipe, kwargs = tiny_pipe()
    ilf.attach_method(pipe, _WrongSkip())
    try:
        with pytest.raises(RuntimeError, match="reconstruction failed"):
            record_feature_distances(pipe, kwargs)
    finally:
        ilf.remove(pipe)
    ilf.apply_feedback(pipe, ilf.FeedbackConfig(loop_start=1, loop_end=2))
    try:
        with pytest.raises(ValueError, match="attached"):
            record_feature_distances(pipe, kwargs)
    finally:
        ilf.remove(pipe)


def test_save_and_load(tmp_path):
    maps = {"baseline_over_steps": np.arange(6, dtype=np.float32).reshape(2, 3)}
    st, js = save_feature_change(maps, tmp_path / "f", {"backbone": "toy-t2i", "steps": 3})
    for source in (tmp_path / "f", st, tmp_path / "f" / "features.npz"):
        arrays, meta = load_feature_change(source)
        np.testing.assert_array_equal(arrays["baseline_over_steps"], maps["baseline_over_steps"])
        assert meta["backbone"] == "toy-t2i" and "mean L2" in meta["distance"]
    with np.load(tmp_path / "f" / "features.npz", allow_pickle=False) as data:  # arrays only: no pickle
        assert data.files == ["baseline_over_steps"]


def _tiny_toy_t2i_pipeline(task: str, device="cpu", **_):
    """The toy t2i pipeline's shipped caption encoder with a tiny random 4-block transformer."""
    from ilf.toy.backbones import ToyPixelVAE, sampling_scheduler
    from ilf.toy.encoder import ENCODER_CONFIG, load_caption_encoder
    from ilf.toy.pipelines import asset_path

    tokenizer, text_encoder = load_caption_encoder(asset_path("t2i"))
    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(num_layers=4, attention_head_dim=8, num_attention_heads=2, sample_size=8,
                                  in_channels=3, out_channels=3, patch_size=2, caption_channels=ENCODER_CONFIG["d_model"],
                                  cross_attention_dim=16, norm_type="ada_norm_single", use_additional_conditions=False)
    return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=ToyPixelVAE(), transformer=tr,
                               scheduler=sampling_scheduler())


def test_features_command_from_workflow_config(tmp_path, monkeypatch):
    import yaml

    import ilf.toy.pipelines as toy_pipelines
    from ilf.cli import main

    try:
        _tiny_toy_t2i_pipeline("t2i")
    except FileNotFoundError:
        pytest.skip("toy caption encoder assets are not in this checkout")
    monkeypatch.setattr(toy_pipelines, "load_toy_pipeline", _tiny_toy_t2i_pipeline)
    cfg = dict(name="t", world="toy", out_dir=str(tmp_path / "out"), seed=3, device="cpu",
               backbones={"toy-t2i": dict(task="t2i", num_blocks=4, resolution=8)},
               rows=[dict(name="b", table="table1", backbone="toy-t2i", steps=4, method="baseline", prompts="toy-captions")],
               features=[dict(name="tiny", backbone="toy-t2i", steps=4, num_prompts=2, prompts="toy-captions",
                              cache=dict(location="inner", num_cached=2, interval=2))])
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["features", "--config", str(tmp_path / "wf.yaml"), "--name", "tiny", "--out", str(tmp_path / "f")]) == 0
    arrays, meta = load_feature_change(tmp_path / "f")
    assert arrays["cache_over_steps"].shape == (4, 4) and meta["seed"] == 3 and meta["cache"]["num_cached"] == 2
    assert meta["world"] == "toy" and len(meta["inputs"]) == 2
    assert main(["features", "--config", str(tmp_path / "wf.yaml"), "--name", "nope", "--out", str(tmp_path / "g")]) == 2


def test_features_settings_read_the_former_cache_key_and_flag(tmp_path):
    import argparse

    import yaml

    from ilf.commands import features

    parser = argparse.ArgumentParser()
    features.add_arguments(parser)
    entry = dict(name="tiny", backbone="toy-t2i", cache=dict(location="first", num_blocks=3))
    cfg = dict(name="t", world="toy", out_dir=str(tmp_path / "out"), seed=3, device="cpu",
               backbones={"toy-t2i": dict(task="t2i", num_blocks=4, resolution=8)},
               rows=[dict(name="b", table="table1", backbone="toy-t2i", steps=4, method="baseline", prompts="toy-captions")],
               features=[entry])
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(cfg))
    args = parser.parse_args(["--config", str(tmp_path / "wf.yaml"), "--name", "tiny", "--out", str(tmp_path / "f")])
    with pytest.warns(DeprecationWarning, match="`num_cached`"):
        assert features._settings(args)["cache"] == {"location": "first", "num_cached": 3}
    args = parser.parse_args(["--backbone", "toy-t2i", "--cache-num-blocks", "5", "--out", str(tmp_path / "f")])
    assert features._settings(args)["cache"] == {"num_cached": 5}
    args = parser.parse_args(["--backbone", "toy-t2i", "--cache-num-cached", "4", "--out", str(tmp_path / "f")])
    assert features._settings(args)["cache"] == {"num_cached": 4}
