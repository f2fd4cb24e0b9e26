"""Training ILF on Qwen-Image and Sana (tiny real QwenImageTransformer2DModel / SanaTransformer2DModel with their
real VAEs and schedulers, CPU): latents and caption embeddings as the stock pipelines make them, the model call as
the stock pipeline makes it (bit for bit in float32), a few training steps, the saved module attached again."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import QwenImagePipeline
from safetensors.torch import load_file

from train_flow import LOOP, MAX_TOKENS, flow_config, qwen_encode, sana_encode, with_caption_encoder

from ilf import apply_feedback, bypass, load_feedback
from ilf.config import FeedbackConfig
from ilf.toy.data import make_shapes_dataset
from ilf.train import precompute, train
from ilf.train.backbone import check_trainable, objective_of
from ilf.train.data import LatentShards, TrainStream, collate
from ilf.train.diagnostics import DIAGNOSTICS_NAME
from ilf.train.flow import FlowObjective
from ilf.train.objectives import make_objective
from ilf.train.precompute import sana_complex_human_instruction
from tolerances import reduction_tol

FAMILIES = ("qwen", "sana")
RESOLUTION = 32  # pixels: 8 x 8 latents through the tiny VAEs (downsampling 4); Qwen-Image packs them to 16 tokens
LATENT = {"qwen": [4, 8, 8], "sana": [4, 8, 8]}
# the tiny VAEs' encoders (tests/helpers/tiny_qwenimage.py, tiny_sana.py): 3 x 3 (x 3) convolutions over at most 16
# channels and attention over 64 latent tokens, a few of each: one float32 evaluation against another (kernels may
# differ between a module's first call and later ones)
VAE_TOL = reduction_tol([27 * 16] * 8 + [64] * 2)
# Qwen-Image VAE statistics far from 0 / 1, so that the normalisation is seen
QWEN_MEAN, QWEN_STD = [0.3, -0.2, 0.1, -0.4], [0.5, 2.0, 1.5, 0.8]


def _pipeline(family: str):
    if family == "qwen":
        from tiny_qwenimage import qwen_pipeline, tiny_qwen_vae

        pipe = qwen_pipeline(6)
        pipe.vae = tiny_qwen_vae(latents_mean=QWEN_MEAN, latents_std=QWEN_STD)
        return pipe
    from tiny_sana import sana_pipeline

    return sana_pipeline(6)


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_flow_latents")
    out = {}
    for family in FAMILIES:
        pipe = with_caption_encoder(_pipeline(family))
        precompute(flow_config(family, root / family, RESOLUTION), root / family, pipeline=pipe, progress=False)
        out[family] = (root / family, pipe.encode_calls)
    return out


def _pixels(n: int) -> torch.Tensor:
    images = make_shapes_dataset(12, 0, RESOLUTION)[0][:n]
    return torch.from_numpy(images.astype("float32")).permute(0, 3, 1, 2) / 127.5 - 1.0


def test_qwen_image_shards_hold_the_pipelines_latents_captions_and_negative_prompt(latents):
    """Latents: the VAE's posterior mean of the one-frame video, (z - latents_mean) / latents_std per channel (what
    QwenImagePipeline's `latents / (1 / latents_std) + latents_mean` undoes before decoding); captions: the
    pipeline's `encode_prompt`; the null condition: the model card's negative prompt " "."""
    root, calls = latents["qwen"]
    meta = json.loads((root / "meta.json").read_text())
    assert meta["latent_shape"] == LATENT["qwen"] and meta["pooled_dim"] is None and meta["caption_dim"] == 16
    pipe = _pipeline("qwen")
    vae = pipe.vae
    pixels = _pixels(5)
    with torch.no_grad():  # as precompute batches shard 0 (data.batch_size 4): samples 0..3, then 4
        z = torch.cat([vae.encode(pixels[i:j, :, None]).latent_dist.mode() for i, j in ((0, 4), (4, 5))])
    shard = load_file(str(root / "shard_00000.safetensors"))
    mean = torch.tensor(QWEN_MEAN).view(1, 4, 1, 1, 1)
    std = torch.tensor(QWEN_STD).view(1, 4, 1, 1, 1)
    want = ((z - mean) * (1.0 / std))[:, :, 0]
    torch.testing.assert_close(shard["latents"], want, rtol=VAE_TOL, atol=VAE_TOL * float(want.abs().max()))
    # the pipeline's denormalisation before vae.decode gives the VAE's latents back (float32 rounding of two ops)
    back = shard["latents"][:, :, None] / (1.0 / std) + mean
    two = 4 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(back, z, rtol=two, atol=two * float(z.abs().max()))
    assert float((shard["latents"] - z[:, :, 0]).abs().max()) > 0.1  # the normalisation is not the identity here
    captions = make_shapes_dataset(12, 0, RESOLUTION)[1][:5]
    emb, mask = qwen_encode(captions, 16, MAX_TOKENS)
    mask = torch.ones(emb.shape[:2], dtype=torch.long) if mask is None else mask
    length = int(mask.sum(1).max())
    assert torch.equal(shard["prompt_embeds"], emb[:, :length]) and torch.equal(shard["prompt_attention_mask"].long(),
                                                                                 mask[:, :length])
    assert {c["max_sequence_length"] for c in calls} == {MAX_TOKENS}
    null = load_file(str(root / "null_condition.safetensors"))
    neg, _ = qwen_encode([" "], 16)
    assert [" "] in [c["prompt"] for c in calls] and torch.equal(null["prompt_embeds"], neg)
    assert null["prompt_embeds"].abs().sum() > 0  # a real negative prompt's embedding, not zeros
    shards = LatentShards(root)
    dropped = collate([TrainStream(shards, 0, 1000, 1.0)[p] for p in range(2)])
    assert torch.equal(dropped["prompt_embeds"][0], neg[0])


def _captured_qwen_call(padded: bool):
    """One step of the stock QwenImagePipeline (no true CFG) in float32: the transformer's keyword inputs and output."""
    from tiny_qwenimage import SIDE, qwen_embeds

    pipe = _pipeline("qwen")
    seen = {}

    def hook(module, args, kwargs, out):
        seen.update(kwargs)
        seen["out"] = out[0]
    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    emb = qwen_embeds()
    mask = emb["prompt_embeds_mask"] if padded else torch.ones_like(emb["prompt_embeds_mask"])
    pipe(prompt_embeds=emb["prompt_embeds"], prompt_embeds_mask=mask, num_inference_steps=2, height=SIDE, width=SIDE,
         true_cfg_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    handle.remove()
    return pipe, seen, {"prompt_embeds": emb["prompt_embeds"], "prompt_attention_mask": mask}


@pytest.mark.numerics
@pytest.mark.parametrize("padded", [True, False])
def test_qwen_image_objective_calls_the_model_as_the_stock_pipeline_does(padded):
    """The objective's call at the pipeline's state and noise level is the stock QwenImagePipeline's transformer call,
    bit for bit in float32: packed latents, img_shapes, t / 1000, the caption mask (None where every token is valid,
    as the pipeline passes it), and the unpacked output."""
    from tiny_qwenimage import SIDE

    pipe, seen, cond = _captured_qwen_call(padded)
    obj = make_objective("auto", "fast", pipe, latent_shape=tuple(LATENT["qwen"]))
    assert isinstance(obj, FlowObjective) and obj.time_scale == 1.0  # Qwen-Image takes s (the pipeline's t / 1000)
    assert (seen["encoder_hidden_states_mask"] is None) == (not padded)
    x = QwenImagePipeline._unpack_latents(seen["hidden_states"], SIDE, SIDE, pipe.vae_scale_factor)[:, :, 0]
    want = QwenImagePipeline._unpack_latents(seen["out"], SIDE, SIDE, pipe.vae_scale_factor)[:, :, 0]
    ours_seen = {}
    handle = pipe.transformer.register_forward_hook(lambda m, a, kw, out: ours_seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        ours = obj.velocity(x, seen["timestep"].double() / obj.time_scale, obj.inputs(cond))
    handle.remove()
    assert ours.shape == (1, *LATENT["qwen"]) and torch.equal(ours, want)
    assert torch.equal(ours_seen["hidden_states"], seen["hidden_states"]) and ours_seen["img_shapes"] == seen["img_shapes"]
    assert torch.equal(ours_seen["timestep"], seen["timestep"])
    mask_ours, mask_pipe = ours_seen["encoder_hidden_states_mask"], seen["encoder_hidden_states_mask"]
    assert (mask_ours is None and mask_pipe is None) or torch.equal(mask_ours, mask_pipe)
    # with feedback attached and bypassed, the same call gives the same output
    apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    with torch.no_grad(), bypass(pipe.transformer):
        torch.testing.assert_close(obj.velocity(x, seen["timestep"].double(), obj.inputs(cond)), want, rtol=0, atol=0)


def test_sana_shards_hold_the_pipelines_latents_captions_and_negative_prompt(latents):
    """Latents: the DC-AE's `latent` times scaling_factor (SanaPipeline divides by it before decoding); captions:
    the pipeline's `encode_prompt` with its default complex human instruction; the null condition: the negative
    "" as the pipeline encodes it for guidance (without the instruction)."""
    root, calls = latents["sana"]
    meta = json.loads((root / "meta.json").read_text())
    assert meta["latent_shape"] == LATENT["sana"] and meta["pooled_dim"] is None and meta["caption_dim"] == 16
    vae = _pipeline("sana").vae
    pixels = _pixels(5)
    with torch.no_grad():  # as precompute batches shard 0 (data.batch_size 4): samples 0..3, then 4
        z = torch.cat([vae.encode(pixels[i:j]).latent for i, j in ((0, 4), (4, 5))])
    shard = load_file(str(root / "shard_00000.safetensors"))
    want = z * vae.config.scaling_factor
    torch.testing.assert_close(shard["latents"], want, rtol=VAE_TOL, atol=VAE_TOL * float(want.abs().max()))
    assert float((shard["latents"] - z).abs().max()) > 0.1  # scaled: not the DC-AE's latent itself
    captions = make_shapes_dataset(12, 0, RESOLUTION)[1][:5]
    chi = sana_complex_human_instruction()
    assert chi and chi[-1] == "User Prompt: "  # SanaPipeline.__call__'s default
    caption_calls = [c for c in calls if c["prompt"] != [""]]
    assert caption_calls and all(c["complex_human_instruction"] == chi and not c["do_classifier_free_guidance"]
                                 and c["max_sequence_length"] == MAX_TOKENS for c in caption_calls)
    emb, mask = sana_encode(captions, 16, MAX_TOKENS, instruction=True)
    length = int(mask.sum(1).max())
    assert torch.equal(shard["prompt_embeds"], emb[:, :length])
    assert torch.equal(shard["prompt_attention_mask"].long(), mask[:, :length])
    assert not torch.equal(shard["prompt_embeds"], sana_encode(captions, 16, MAX_TOKENS, False)[0][:, :length])
    null = load_file(str(root / "null_condition.safetensors"))
    (null_call,) = [c for c in calls if c["prompt"] == [""]]
    assert null_call["do_classifier_free_guidance"] and null_call["negative_prompt"] == ""
    neg, neg_mask = sana_encode([""], 16, MAX_TOKENS, instruction=False)
    n = int(neg_mask.sum())
    assert torch.equal(null["prompt_embeds"], neg[:, :n]) and null["prompt_embeds"].abs().sum() > 0


@pytest.mark.numerics
@pytest.mark.parametrize("padded", [True, False])
def test_sana_objective_calls_the_model_as_the_stock_pipeline_does(padded):
    """The objective's call at the pipeline's state and timestep is the stock SanaPipeline's transformer call, bit
    for bit in float32: the latents as they are, the scheduler's timestep (1000 s, x the config's timestep_scale),
    `encoder_attention_mask`."""
    from tiny_sana import sana_embeds

    pipe = _pipeline("sana")
    seen = {}

    def hook(module, args, kwargs, out):
        seen.update(kwargs, x=args[0], out=out[0])
    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    emb = sana_embeds()
    mask = emb["prompt_attention_mask"] if padded else torch.ones_like(emb["prompt_attention_mask"])
    pipe(prompt_embeds=emb["prompt_embeds"], prompt_attention_mask=mask, num_inference_steps=2, height=32, width=32,
         guidance_scale=1.0, output_type="latent", use_resolution_binning=False,
         generator=torch.Generator().manual_seed(0))
    handle.remove()
    obj = make_objective("auto", "fast", pipe, latent_shape=tuple(LATENT["sana"]))
    assert isinstance(obj, FlowObjective) and obj.time_scale == 1000.0  # Sana takes the scheduler's timestep
    cond = {"prompt_embeds": emb["prompt_embeds"], "prompt_attention_mask": mask}
    ours_seen = {}
    handle = pipe.transformer.register_forward_hook(lambda m, a, kw, out: ours_seen.update(kw, x=a[0]), with_kwargs=True)
    with torch.no_grad():
        ours = obj.velocity(seen["x"], seen["timestep"].double() / obj.time_scale, obj.inputs(cond))
    handle.remove()
    assert ours.shape == (1, *LATENT["sana"]) and torch.equal(ours, seen["out"])
    assert torch.equal(ours_seen["timestep"], seen["timestep"]) and torch.equal(ours_seen["x"], seen["x"])
    assert torch.equal(ours_seen["encoder_attention_mask"], seen["encoder_attention_mask"])
    apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    with torch.no_grad(), bypass(pipe.transformer):
        again = obj.velocity(seen["x"], seen["timestep"].double() / obj.time_scale, obj.inputs(cond))
    torch.testing.assert_close(again, seen["out"], rtol=0, atol=0)


def test_sana_training_noise_levels_are_its_flow_shift_table():
    """Sana samples with DPM-Solver++ on flow sigmas (flow_shift 3): training draws from the flow-matching table at
    that shift, s' = 3 s / (1 + 2 s) for s = 1/T .. 1."""
    pipe = _pipeline("sana")
    obj = make_objective("auto", "fast", pipe, latent_shape=tuple(LATENT["sana"]))
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(obj.sigmas, 3 * s / (1 + 2 * s), rtol=1e-6, atol=0)  # float32 table, as the scheduler's


@pytest.mark.parametrize("family,name", [("qwen", "qwen-image"), ("sana", "sana-1600m-1024")])
def test_the_backbone_trains_on_its_flow_matching_scheduler(family, name):
    assert objective_of("auto", _pipeline(family)) == "flow"
    check_trainable(name)  # registered: no refusal any more


def _diagnostics(run) -> list[dict]:
    return [json.loads(line) for line in (run / DIAGNOSTICS_NAME).read_text().splitlines()]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_backbone_trains_and_its_module_attaches_again(latents, tmp_path, family):
    """20 `fast` steps: the probe loss falls, the scales leave 0, the backbone stays frozen, and the final folder
    loads into a fresh stock pipeline with the same scales."""
    pipe = _pipeline(family)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = flow_config(family, latents[family][0], RESOLUTION, iterations=20, log_interval=10, cond_dropout=0.25)
    final = train(cfg, tmp_path / "run", pipeline=pipe, progress=False)
    recs = _diagnostics(tmp_path / "run")
    first, last = recs[0], recs[-1]
    assert last["iteration"] == 20
    # effect sizes (as tests/train/test_flow_training.py): Adam moves a scale by at most lr = 0.01 a step
    assert last["loss"] < 0.99 * first["loss"], (first["loss"], last["loss"])
    scales = torch.tensor(last["scales"])
    assert scales.shape[0] == LOOP[1] - LOOP[0] + 1 and float(scales.abs().max()) > 0.05, last["scales"]
    assert max(last["feedback_ratio"]) > 0.01 and last["output_change"] > 0
    for key, value in before.items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key
    fresh = _pipeline(family)
    load_feedback(fresh, final)
    torch.testing.assert_close(fresh.transformer.ilf_scales, pipe.transformer.ilf_scales, rtol=0, atol=0)
    print(f"{family}: probe loss {first['loss']:.4f} -> {last['loss']:.4f}, max |scale| {float(scales.abs().max()):.4f}")


@pytest.mark.parametrize("family,mode", [("qwen", "standard"), ("qwen", "none"), ("sana", "standard"),
                                         ("sana", "none")])
def test_other_modes_train(latents, tmp_path, family, mode):
    cfg = flow_config(family, latents[family][0], RESOLUTION, iterations=2, distill=mode, teacher_steps=2)
    train(cfg, tmp_path / "run", pipeline=_pipeline(family), progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rec = [r for r in log if "loss" in r][-1]
    assert ("loss_distill" in rec) == (mode != "none") and torch.isfinite(torch.tensor(rec["loss"]))
    assert any(abs(s) > 0 for s in torch.tensor(rec["scales"]).flatten().tolist())


def test_qwen_image_batches_of_different_caption_lengths_join_in_one_shard(tmp_path):
    """QwenImagePipeline's `encode_prompt` pads a batch only to its own longest caption: the batches of one shard
    are joined padded with masked zeros, and every sample reads back its own tokens."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "pairs"
    caps = ["one red circle", "two large blue squares at the top", "three crosses", "one small green circle",
            "two small purple circles on the right"]
    lines = []
    for i, caption in enumerate(caps):
        (folder / "img").mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(i).integers(0, 255, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": caption}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    cfg = flow_config("qwen", tmp_path / "lat", RESOLUTION)
    cfg.data.source, cfg.data.path, cfg.data.num_samples, cfg.data.batch_size = "captions", str(folder), None, 2
    precompute(cfg, tmp_path / "lat", pipeline=with_caption_encoder(_pipeline("qwen")), progress=False)
    shard = load_file(str(tmp_path / "lat" / "shard_00000.safetensors"))
    assert shard["prompt_embeds"].shape[1] == 7  # the longest caption of the shard, across its three batches
    shards = LatentShards(tmp_path / "lat")
    for i, caption in enumerate(caps):
        emb, _ = qwen_encode([caption], 16)
        assert torch.equal(shards[i]["prompt_embeds"], emb[0]), caption


@pytest.mark.parametrize("family", FAMILIES)
def test_block_forwards_per_objective(latents, family):
    """fast = student + ONE teacher forward at s/2; standard = student + K; none = the student alone."""
    from ilf import count_block_forwards, model_blocks

    pipe = _pipeline(family)
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    batch = collate([TrainStream(LatentShards(latents[family][0]), 0, 1000, 0.0)[p] for p in range(2)])
    n, m, k = len(model_blocks(tr)), LOOP[1] - LOOP[0] + 1, 3
    for mode, want in {"none": n + m + 1, "fast": 2 * n + m + 1, "standard": (k + 1) * n + m + 1}.items():
        obj = make_objective("flow", mode, pipe, teacher_steps=k, latent_shape=tuple(LATENT[family]))
        with count_block_forwards(tr) as counter:
            loss, terms = obj(batch)
        assert counter.count == want, (mode, counter.count, want)
        assert loss.shape == (2,) and torch.isfinite(loss).all() and ("loss_distill" in terms) == (mode != "none")


def test_bfloat16_storage_of_the_frozen_backbone_trains_a_float32_feedback(latents, tmp_path):
    """`frozen_storage_dtype: bfloat16` (a 20B Qwen-Image in 80 GB): the frozen blocks hold bfloat16 weights, F and
    the scales stay float32, and training still lowers the probe loss and moves the scales."""
    pipe = _pipeline("qwen")
    cfg = flow_config("qwen", latents["qwen"][0], RESOLUTION, iterations=20, log_interval=10, cond_dropout=0.25)
    cfg.frozen_storage_dtype = "bfloat16"
    train(cfg.validate(), tmp_path / "run", pipeline=pipe, progress=False)
    t = pipe.transformer
    frozen = [p for n, p in t.named_parameters() if n.startswith("transformer_blocks.") and p.ndim == 2]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # every block's linear weights
    assert all(p.dtype == torch.float32 for p in t.ilf_feedback.parameters()) and t.ilf_scales.dtype == torch.float32
    recs = _diagnostics(tmp_path / "run")
    assert recs[-1]["loss"] < 0.99 * recs[0]["loss"], (recs[0]["loss"], recs[-1]["loss"])
    assert float(torch.tensor(recs[-1]["scales"]).abs().max()) > 0.05
