"""The flow-matching toy backbone toy-flux: pixel-shuffle VAE and packing, shipped FluxPipeline, flow pretraining,
the generation harness's toy-flux rows."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from tolerances import storage_tol

from ilf.errors import ILFConfigError, MissingAssetError
from ilf.toy.flux import (FLUX_CONFIG, ToyPixelShuffleVAE, check_flux_assets, flux_asset_path, load_toy_flux_pipeline,
                          pack_pixels, pooled_embedding, position_ids, sample_toy_flux, toy_flux_call_kwargs,
                          toy_flux_prompt_kwargs)
from ilf.toy.pipelines import ASSETS
from ilf.toy.pretrain import PretrainConfig, pretrain

torch.set_num_threads(1)
PROMPTS = ["two small red circles on the left", "one large cyan cross in the center"]
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def test_pixel_shuffle_vae_and_packing_invert_what_the_pipeline_does():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    vae = ToyPixelShuffleVAE()
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (2, 12, 16, 16) and torch.equal(vae.decode(z).sample, x)
    tokens = pack_pixels(x)
    assert tokens.shape == (2, 64, 4 * 12) and tokens.shape[-1] == FLUX_CONFIG["in_channels"]
    unpacked = FluxPipeline._unpack_latents(tokens, 32, 32, vae_scale_factor=2)  # what the pipeline decodes
    assert torch.equal(vae.decode(unpacked).sample, x)
    img_ids, txt_ids = position_ids()
    assert img_ids.shape == (64, 3) and txt_ids.shape == (12, 3) and img_ids[:, 1:].max() == 7


def test_pooled_embedding_is_the_mean_over_real_tokens():
    emb = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    pooled = pooled_embedding(emb, mask)
    assert torch.equal(pooled[0], emb[0, :2].mean(0)) and torch.equal(pooled[1], emb[1, 0])


def test_shipped_toy_flux_pipeline_is_stock_and_deterministic():
    pipe = load_toy_flux_pipeline()
    assert type(pipe) is FluxPipeline and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert type(pipe.transformer) is FluxTransformer2DModel and pipe.text_encoder is None
    assert len(pipe.transformer.transformer_blocks) == 2 and len(pipe.transformer.single_transformer_blocks) == 4
    assert not pipe.transformer.config.guidance_embeds
    calls: list[int] = []
    pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    a = sample_toy_flux(pipe, PROMPTS, steps=3, seed=1)
    assert len(calls) == 2 * 3  # true classifier-free guidance: two transformer calls per step
    b = sample_toy_flux(pipe, PROMPTS, steps=3, seed=1)
    c = sample_toy_flux(pipe, PROMPTS, steps=3, seed=2)
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, b) and np.abs(a - c).mean() > 1e-2
    calls.clear()
    sample_toy_flux(pipe, PROMPTS, steps=3, seed=1, guidance_scale=1.0)
    assert len(calls) == 3  # no guidance: one call per step
    meta = json.loads((flux_asset_path() / "pretrain.json").read_text())
    assert meta["backbone"] == "toy-flux" and "--backbone toy-flux" in meta["command"] and "provenance" in meta


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_toy_flux_half_precision_forward_matches_float32(dtype):
    """One transformer call of the shipped weights in half precision against float32: storage rounding of about eight
    intermediates per block, 6 blocks, plus embedders and head (tests/helpers/tolerances.py)."""
    ref, half = load_toy_flux_pipeline().transformer, load_toy_flux_pipeline(torch_dtype=dtype).transformer
    assert half.dtype == dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 48, generator=gen)
    kw = toy_flux_prompt_kwargs(PROMPTS)
    img_ids, txt_ids = position_ids()
    args = dict(timestep=torch.tensor([0.7, 0.3]), img_ids=img_ids, txt_ids=txt_ids)
    with torch.no_grad():
        out32 = ref(hidden_states=x, encoder_hidden_states=kw["prompt_embeds"],
                    pooled_projections=kw["pooled_prompt_embeds"], **args).sample
        out = half(hidden_states=x.to(dtype), encoder_hidden_states=kw["prompt_embeds"].to(dtype),
                   pooled_projections=kw["pooled_prompt_embeds"].to(dtype), **args).sample.float()
    rel = ((out - out32).norm() / out32.norm()).item()
    assert out32.std() > 0.1 and rel < storage_tol(8 * 6 + 8, dtype)


def test_missing_flux_weights_name_the_command(tmp_path):
    shutil.copytree(ASSETS / "toy-t2i", tmp_path / "toy-t2i")
    with pytest.raises(MissingAssetError, match="ilf toy pretrain --task t2i --backbone toy-flux"):
        check_flux_assets(tmp_path)


# --- flow-matching pretraining ------------------------------------------------------------------------------

def _cfg(steps: int) -> PretrainConfig:
    return PretrainConfig(task="t2i", backbone="toy-flux", steps=steps, batch_size=2, num_images=8, warmup=1)


def test_flow_pretrain_resume_equals_straight_run(tmp_path):
    pretrain(_cfg(2), tmp_path / "a", state_dir=tmp_path / "sa")
    pretrain(_cfg(1), tmp_path / "b", state_dir=tmp_path / "sb")
    pretrain(_cfg(2), tmp_path / "b", state_dir=tmp_path / "sb", resume=True)
    assert (tmp_path / "a" / WEIGHTS).read_bytes() == (tmp_path / "b" / WEIGHTS).read_bytes()
    meta = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    assert meta["backbone"] == "toy-flux" and meta["steps_done"] == 2 and np.isfinite(meta["final_loss"])
    assert not (tmp_path / "a" / "text_encoder").exists()  # conditions through the encoder shipped with toy-t2i
    # the written folder is what load_toy_flux_pipeline reads
    shutil.copytree(ASSETS / "toy-t2i", tmp_path / "root" / "toy-t2i")
    shutil.copytree(tmp_path / "a", tmp_path / "root" / "toy-flux")
    pipe = load_toy_flux_pipeline(root=tmp_path / "root")
    assert pipe(**toy_flux_prompt_kwargs(PROMPTS[:1]), num_inference_steps=1, output_type="np",
                **toy_flux_call_kwargs()).images.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("bad", [dict(task="c2i", backbone="toy-flux"), dict(backbone="toy-flux", min_snr_gamma=5.0),
                                 dict(task="t2i", backbone="toy-c2i")])
def test_flow_pretrain_refuses_what_it_cannot_train(tmp_path, bad):
    with pytest.raises(ILFConfigError):
        pretrain(PretrainConfig(**{"steps": 1, "batch_size": 2, **bad}), tmp_path / "o", state_dir=tmp_path / "s")
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


# --- generation harness ---------------------------------------------------------------------------------------

def _row(tmp_path: Path, guidance: float = 4.0) -> dict:
    from ilf.harness.workflow_config import get_row, resolve

    cfg = resolve({"name": "t", "world": "toy", "out_dir": str(tmp_path / "out"), "seed": 7,
                   "backbones": {"toy-flux": {"task": "t2i", "num_blocks": 6, "resolution": 32}},
                   "rows": [{"name": "f", "table": "table1", "backbone": "toy-flux", "steps": 2, "method": "baseline",
                             "prompts": "toy-captions", "num_prompts": 2, "images_per_prompt": 1, "batch_size": 2,
                             "metrics": ["toy_adherence"], "guidance_scale": guidance}]})
    return get_row(cfg, "f")


def test_toy_flux_rows_build_the_flow_pipeline_and_sample_deterministically(tmp_path):
    from ilf.adapters import model_blocks
    from ilf.harness.generate import _call, build_pipeline, image_jobs

    row = _row(tmp_path)
    pipe = build_pipeline(row, "cpu")
    assert type(pipe) is FluxPipeline and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert len(model_blocks(pipe.transformer)) == row["num_blocks"] == 6
    jobs = image_jobs(row)
    a, b = _call(pipe, row, jobs), _call(pipe, row, jobs[::-1])
    assert [im.size for im in a] == [(32, 32)] * 2
    assert [np.asarray(im).tobytes() for im in a] == [np.asarray(im).tobytes() for im in b[::-1]]  # per-image seeds


def _has_flux_adapter() -> bool:
    from ilf.attach import adapter_for

    try:
        adapter_for(FluxTransformer2DModel(**FLUX_CONFIG))
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _has_flux_adapter(), reason="counting FLUX block forwards needs the FLUX adapter")
def test_toy_flux_baseline_row_generates(tmp_path):
    from ilf.harness.generate import generate_row
    from ilf.io import read_jsonl

    row = _row(tmp_path, guidance=1.0)
    recs = read_jsonl(generate_row(row, device="cpu", warmup=0, progress=False))
    assert len(recs) == 2 and {r["block_forwards_measured"] for r in recs} == {2 * 6}
    assert {(r["true_cfg_scale"], r["negative_prompt"]) for r in recs} == {(1.0, None)}  # no uncond call


@pytest.mark.skipif(not _has_flux_adapter(), reason="counting FLUX block forwards needs the FLUX adapter")
def test_toy_flux_true_cfg_row_counts_two_calls_per_step(tmp_path):
    """True CFG (guidance_scale > 1, the empty caption as negative) runs a cond and an uncond call per step: the
    analytic count of the row and of every record is twice the formula, and equals the measured one."""
    from ilf.harness.generate import generate_row
    from ilf.io import read_jsonl

    row = _row(tmp_path, guidance=4.0)
    assert row["block_forwards_analytic"] == 2 * 2 * 6
    recs = read_jsonl(generate_row(row, device="cpu", warmup=0, progress=False))
    assert {(r["block_forwards_measured"], r["block_forwards_analytic"]) for r in recs} == {(2 * 2 * 6, 2 * 2 * 6)}
    assert {(r["true_cfg_scale"], r["negative_prompt"]) for r in recs} == {(4.0, "")}  # the empty caption as uncond


def test_step_sweep_runs_the_flow_toy_and_refuses_other_backbones():
    from ilf.toy.sweep import step_sweep

    recs = {r["steps"]: r for r in step_sweep("t2i", [2, 1], n=2, backbone="toy-flux", progress=False)}
    assert set(recs) == {1, 2} and {r["backbone"] for r in recs.values()} == {"toy-flux"}
    assert recs[2]["metric"] == "toy_adherence" and recs[2]["diff_vs_reference"] == 0.0
    with pytest.raises(ILFConfigError, match="toy-flux"):
        step_sweep("t2i", [1], n=1, backbone="toy-c2i")
    with pytest.raises(ILFConfigError, match="backbone"):
        step_sweep("c2i", [1], n=1, backbone="toy-flux")
