"""Training ILF on flow-matching backbones (tiny real FluxTransformer2DModel / SD3Transformer2DModel, CPU):
shards with pooled embeddings, the model's inputs as the stock pipelines build them, the training loop."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from train_flow import LOOP, MAX_TOKENS, embed_captions, flow_config, with_caption_encoder

from ilf import ILFConfigError, apply_feedback, bypass, count_block_forwards, load_feedback
from ilf.config import FeedbackConfig
from ilf.train import precompute, train
from ilf.train.backbone import objective_of
from ilf.train.data import LatentShards, TrainStream, collate
from ilf.train.diagnostics import DIAGNOSTICS_NAME
from ilf.train.flow import FlowObjective
from ilf.train.objectives import make_objective
from tolerances import reduction_tol, storage_tol

FAMILIES = ("flux", "sd3")


def _pipeline(family: str, **kw):
    if family == "flux":
        from tiny_flux import tiny_flux_pipeline

        return tiny_flux_pipeline(**kw)
    from tiny_sd3 import tiny_sd3_pipeline

    return tiny_sd3_pipeline(**kw)


def _num_blocks(pipe) -> int:
    from ilf import model_blocks

    return len(model_blocks(pipe.transformer))


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("flow_latents")
    out = {}
    for family in FAMILIES:
        precompute(flow_config(family, root / family), root / family, pipeline=with_caption_encoder(_pipeline(family)),
                   progress=False)
        out[family] = root / family
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_shards_hold_pooled_embeddings_and_a_zero_null_condition(latents, family):
    root = latents[family]
    pipe = _pipeline(family)
    meta = json.loads((root / "meta.json").read_text())
    cfg = pipe.transformer.config
    assert meta["latent_shape"] == [16, 16, 16] and meta["pooled_dim"] == cfg.pooled_projection_dim
    assert meta["caption_dim"] == cfg.joint_attention_dim
    shard = load_file(str(root / "shard_00000.safetensors"))
    from ilf.toy.data import make_shapes_dataset

    captions = make_shapes_dataset(12, 0, 16)[1][:5]
    emb, pooled = embed_captions(captions, MAX_TOKENS, cfg.joint_attention_dim, cfg.pooled_projection_dim)
    # every token kept (FLUX/SD3 attend to the padded positions too), exactly the encoder's output
    assert shard["prompt_embeds"].shape == (5, MAX_TOKENS, cfg.joint_attention_dim)
    assert torch.equal(shard["prompt_embeds"], emb) and torch.equal(shard["pooled_prompt_embeds"], pooled)
    assert bool((shard["prompt_attention_mask"] == 1).all())
    null = load_file(str(root / "null_condition.safetensors"))
    assert null["prompt_embeds"].shape == (1, MAX_TOKENS, cfg.joint_attention_dim)
    assert not null["prompt_embeds"].any() and not null["pooled_prompt_embeds"].any()
    shards = LatentShards(root)
    item = shards[7]
    assert torch.equal(item["pooled_prompt_embeds"], load_file(str(root / "shard_00001.safetensors"))["pooled_prompt_embeds"][2])
    stream = TrainStream(shards, 0, 1000, 1.0)  # every condition dropped
    batch = collate([stream[0], stream[1]])
    assert batch["pooled_prompt_embeds"].shape == (2, cfg.pooled_projection_dim)
    assert not batch["pooled_prompt_embeds"].any() and not batch["prompt_embeds"].any()
    kept = collate([TrainStream(shards, 0, 1000, 0.0)[p] for p in range(2)])
    assert kept["pooled_prompt_embeds"].abs().sum() > 0


def test_latents_of_another_pooled_width_are_refused(latents, tmp_path):
    from tiny_sd3 import tiny_sd3_pipeline

    other = tiny_sd3_pipeline(pooled_projection_dim=12)
    with pytest.raises(ILFConfigError, match="pooled prompt embeddings of dim 8"):
        train(flow_config("sd3", latents["sd3"]), tmp_path / "run", pipeline=other, progress=False)
    assert not (tmp_path / "run").exists()


def test_objective_follows_the_scheduler():
    from train_utils import tiny_train_pipeline

    flow, eps = _pipeline("sd3"), tiny_train_pipeline("t2i")
    assert objective_of("auto", flow) == "flow" and objective_of("flow", flow) == "flow"
    assert objective_of("auto", eps) == "epsilon"
    with pytest.raises(ILFConfigError, match="objective"):
        objective_of("epsilon", flow)
    with pytest.raises(ILFConfigError, match="objective"):
        objective_of("flow", eps)


def _captured_call(family: str, guidance: float, dtype: torch.dtype):
    """One denoising step of the stock pipeline (no CFG) in `dtype`: the transformer's keyword inputs and output."""
    pipe = _pipeline(family).to(dtype)
    seen = {}

    def hook(module, args, kwargs, out):
        seen.update(kwargs)
        seen["out"] = out[0]
    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    emb, pooled = embed_captions(["one small red circle on the left"], MAX_TOKENS, pipe.transformer.config.joint_attention_dim,
                                 pipe.transformer.config.pooled_projection_dim)
    extra = dict(guidance_scale=guidance) if family == "flux" else dict(guidance_scale=1.0)  # SD3: no CFG batch
    pipe(prompt_embeds=emb.to(dtype), pooled_prompt_embeds=pooled.to(dtype), num_inference_steps=1, height=16, width=16,
         output_type="latent", generator=torch.Generator().manual_seed(0), **extra)
    handle.remove()
    return pipe, seen, {"prompt_embeds": emb, "pooled_prompt_embeds": pooled}


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family,guidance", [("flux", 3.5), ("flux", 5.0), ("sd3", 1.0)])
def test_objective_calls_the_model_as_the_stock_pipeline_does(family, guidance, dtype):
    """The objective's plain velocity at the pipeline's own state and noise level equals the stock pipeline's
    transformer output: packing, img_ids/txt_ids, guidance embedding, time units and dtypes as the pipeline
    passes them (the batch's embeddings are float32, as the latent shards give them)."""
    pipe, seen, cond = _captured_call(family, guidance, dtype)
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    obj = make_objective("auto", "fast", pipe, latent_shape=(16, 16, 16), guidance=guidance)
    assert isinstance(obj, FlowObjective)
    x, out = seen["hidden_states"], seen["out"]
    if family == "flux":
        assert obj.time_scale == 1.0  # FLUX takes s (FluxPipeline passes t / 1000)
        x, out = FluxPipeline._unpack_latents(x, 16, 16, 1), FluxPipeline._unpack_latents(out, 16, 16, 1)
        assert torch.equal(seen["guidance"], torch.full((1,), guidance))
    else:
        assert obj.time_scale == 1000.0  # SD3 takes the scheduler's timestep, 1000 s
    s = seen["timestep"].double() / obj.time_scale
    with torch.no_grad(), bypass(tr):
        ours = obj.velocity(x.float(), s, obj.inputs(cond))
    assert ours.shape == (1, 16, 16, 16)
    n = _num_blocks(pipe)
    if dtype == torch.float32:
        # the model time is s * scale in float64 then float32 against the pipeline's float32 t / 1000: one rounding
        # of the time input, carried through the tiny model's blocks (width 16, 64 image + 8 text tokens)
        tol = reduction_tol([16] * 4 * n + [72] * n)
    else:  # FLUX's time may round once more in `dtype` (float32 s vs the pipeline's dtype t / 1000): ~8 per block
        tol = storage_tol(8 * n + 8, dtype)
    torch.testing.assert_close(ours, out.float(), rtol=tol, atol=tol * float(out.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_block_forwards_per_objective(latents, family):
    """fast = student + ONE teacher forward at s/2; standard = student + K; none = the student alone."""
    pipe = _pipeline(family)
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    stream = TrainStream(LatentShards(latents[family]), 0, 1000, 0.0)
    batch = collate([stream[p] for p in range(2)])
    n, m, k = _num_blocks(pipe), LOOP[1] - LOOP[0] + 1, 3
    for mode, want in {"none": n + m + 1, "fast": 2 * n + m + 1, "standard": (k + 1) * n + m + 1}.items():
        obj = make_objective("flow", mode, pipe, teacher_steps=k, latent_shape=(16, 16, 16))
        with count_block_forwards(tr) as counter:
            loss, terms = obj(batch)
        assert counter.count == want, (mode, counter.count, want)  # per call (the batch is one call)
        assert loss.shape == (2,) and torch.isfinite(loss).all()
        assert ("loss_distill" in terms) == (mode != "none")


def _diagnostics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / DIAGNOSTICS_NAME).read_text().splitlines()]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_flow_backbone_trains(latents, tmp_path, family):
    """20 steps of `fast` on the tiny backbone: the probe loss falls, the scales leave 0, the backbone stays frozen,
    and the final folder loads into a fresh stock pipeline."""
    pipe = _pipeline(family)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = flow_config(family, latents[family], iterations=20, log_interval=10, cond_dropout=0.25)
    final = train(cfg, tmp_path / "run", pipeline=pipe, progress=False)
    recs = _diagnostics(tmp_path / "run")
    first, last = recs[0], recs[-1]
    assert last["iteration"] == 20
    # Effect sizes, not tolerances: Adam moves a scale by at most lr = 0.01 a step; the probe loss (the velocity
    # target dominates it) must fall by far more than float noise, and F's output must reach the stream
    assert last["loss"] < 0.99 * first["loss"], (first["loss"], last["loss"])
    scales = torch.tensor(last["scales"])
    assert scales.shape[0] == LOOP[1] - LOOP[0] + 1 and float(scales.abs().max()) > 0.05, last["scales"]
    assert max(last["feedback_ratio"]) > 0.01 and last["output_change"] > 0
    for key, value in before.items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key
    fresh = _pipeline(family)
    load_feedback(fresh, final)
    torch.testing.assert_close(fresh.transformer.ilf_scales, pipe.transformer.ilf_scales, rtol=0, atol=0)


@pytest.mark.parametrize("family,mode,sampling,precision", [("flux", "standard", "logit-normal", "no"),
                                                             ("sd3", "none", "uniform", "no"),
                                                             ("flux", "fast", "uniform", "bf16"),
                                                             ("sd3", "standard", "uniform", "bf16")])
def test_other_modes_train(latents, tmp_path, family, mode, sampling, precision):
    cfg = flow_config(family, latents[family], iterations=2, distill=mode, timestep_sampling=sampling,
                      mixed_precision=precision)
    train(cfg, tmp_path / "run", pipeline=_pipeline(family), progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rec = [r for r in log if "loss" in r][-1]
    assert ("loss_distill" in rec) == (mode != "none") and torch.isfinite(torch.tensor(rec["loss"]))
    assert any(abs(s) > 0 for s in torch.tensor(rec["scales"]).flatten().tolist())


def test_train_t_post_inference_is_refused_for_flow(latents, tmp_path):
    cfg = flow_config("sd3", latents["sd3"], train_t_post="inference", train_t_post_steps=10)
    with pytest.raises(ILFConfigError, match="train_t_post"):
        train(cfg, tmp_path / "run", pipeline=_pipeline("sd3"), progress=False)
    assert not (tmp_path / "run").exists()
