"""Training ILF on video-caption pairs (tiny real WanTransformer3DModel, AutoencoderKLWan and umT5 in a stock
WanPipeline, CPU): the `videos` source (PNG frame folders and .mp4 files), precomputed latents and captions against
the pipeline's own encoders and decode path, the training call against the pipeline's transformer call, the loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tiny_wan import tiny_wan
from train_video import (CAPTIONS, FRAMES, HEIGHT, LOOP, MAX_TOKENS, WIDTH, clip_frames, video_config, video_pipeline,
                         write_video_folder)

from ilf import ILFConfigError, apply_feedback, bypass, count_block_forwards, load_feedback, model_blocks
from ilf.config import FeedbackConfig
from ilf.registry import BACKBONES, BackboneSpec, training_refusal
from ilf.train import precompute, train
from ilf.train.backbone import check_trainable, objective_of, task_of
from ilf.train.data import LatentShards, TrainStream, collate
from ilf.train.diagnostics import DIAGNOSTICS_NAME
from ilf.train.objectives import make_objective
from ilf.train.video import WanFlowObjective, denormalise_video_latents, encode_video_latents
from ilf.train.video_data import VideoSourceDataset, read_frames

MP4 = (1, 4)  # clips stored as .mp4; the others as PNG frame folders


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("videos")
    data = write_video_folder(root / "data", mp4=MP4)
    precompute(video_config("wan", data, root / "latents"), root / "latents", pipeline=video_pipeline(), progress=False)
    return {"data": data, "latents": root / "latents"}


def _config(videos, **kw):
    return video_config("wan", videos["data"], videos["latents"], **kw)


def test_wan_t2v_is_trainable_and_image_to_video_is_refused(monkeypatch):
    for name in ("wan21-t2v-1.3b", "wan21-t2v-14b"):
        assert training_refusal(name) is None
        check_trainable(name)
    spec = BACKBONES["wan21-t2v-1.3b"]
    i2v = BackboneSpec("wan21-i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "WanImageToVideoPipeline",
                       "WanTransformer3DModel", {**spec.transformer_config, "image_dim": 1280}, 480, task="t2v")
    monkeypatch.setitem(BACKBONES, "wan21-i2v", i2v)
    assert "WanPipeline backbones only" in training_refusal("wan21-i2v")
    monkeypatch.setitem(BACKBONES, "wan21-i2v", BackboneSpec(**{**i2v.__dict__, "pipeline_class": "WanPipeline"}))
    assert "image-conditioned clips" in training_refusal("wan21-i2v")
    with pytest.raises(ILFConfigError, match="image-conditioned"):
        check_trainable("wan21-i2v")
    with pytest.raises(ILFConfigError, match="image_dim"):  # the class itself, for a pipeline passed in
        task_of(tiny_wan(num_layers=2, image_dim=16))


def test_video_source_reads_frame_folders_and_mp4_as_the_pipelines_video_processor(videos):
    pipe = video_pipeline(num_layers=1)
    cfg = _config(videos)
    source = VideoSourceDataset(cfg.data, HEIGHT, WIDTH, FRAMES)
    assert len(source) == len(CAPTIONS) and source.task == "t2v"
    for i in range(len(CAPTIONS)):
        item = source[i]
        assert item["pixels"].shape == (3, FRAMES, HEIGHT, WIDTH) and item["caption"] == CAPTIONS[i]
        assert -1 <= float(item["pixels"].min()) < 0 < float(item["pixels"].max()) <= 1
        # the frames written (lossless RGB .mp4 or PNG), resized on the short side and centre-cropped by WanPipeline's
        # own video processor: (B, C, F, H, W) in [-1, 1]
        from PIL import Image

        frames = [Image.fromarray(a) for a in clip_frames(i)[:FRAMES]]
        want = pipe.video_processor.preprocess_video(frames, HEIGHT, WIDTH, resize_mode="crop")
        assert torch.equal(item["pixels"], want[0]), i
    # every stride-th frame, from the first; a clip too short for the request names itself
    strided = read_frames(videos["data"] / "clip_01.mp4", 3, stride=3)
    for got, k in zip(strided, (0, 3, 6)):
        assert np.array_equal(np.asarray(got), clip_frames(1)[k])
    with pytest.raises(ValueError, match="clip_00 has 7 frames; 9 frames at stride 1 need 9"):
        read_frames(videos["data"] / "clip_00", 9)


def test_a_videos_folder_without_an_index_or_with_a_bad_record_is_named(tmp_path):
    from ilf.train.config import DataConfig

    (tmp_path / "clips").mkdir()
    cfg = DataConfig(source="videos", path=str(tmp_path / "clips")).validate()
    with pytest.raises(FileNotFoundError, match='one JSON line per video, {"video": "relative/path.mp4"'):
        VideoSourceDataset(cfg, HEIGHT, WIDTH, FRAMES)
    (tmp_path / "clips" / "captions.jsonl").write_text('{"video": "a.mp4", "caption": "x"}\n{"image": "b.png", '
                                                       '"caption": "y"}\n')
    with pytest.raises(ValueError, match="captions.jsonl:2: a record needs 'video'"):
        VideoSourceDataset(cfg, HEIGHT, WIDTH, FRAMES)
    (tmp_path / "clips" / "captions.jsonl").write_text('{"video": "a.gif", "caption": "x"}\n')
    with pytest.raises(FileNotFoundError, match="neither a frame folder nor a video file"):
        VideoSourceDataset(cfg, HEIGHT, WIDTH, FRAMES)


def test_precomputed_latents_are_the_normalised_vae_latents_and_the_pipelines_caption_embeddings(videos):
    pipe = video_pipeline()
    meta = json.loads((videos["latents"] / "meta.json").read_text())
    assert meta["task"] == "t2v" and meta["latent_shape"] == [4, 2, 4, 4]  # (C, (F - 1)/4 + 1, H/8, W/8)
    assert (meta["resolution"], meta["width"], meta["num_frames"], meta["max_sequence_length"]) == (32, 32, 5, 16)
    assert meta["caption_dim"] == 16 and meta["pooled_dim"] is None
    shard = load_file(str(videos["latents"] / "shard_00000.safetensors"))
    source = VideoSourceDataset(_config(videos).data, HEIGHT, WIDTH, FRAMES)
    pixels = torch.stack([source[i]["pixels"] for i in range(4)])
    with torch.no_grad():
        z = pipe.vae.encode(pixels).latent_dist.mode()
    vae = pipe.vae.config
    mean = torch.tensor(vae.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.latents_std).view(1, -1, 1, 1, 1)
    assert shard["latents"].shape == (4, 4, 2, 4, 4)
    assert torch.equal(shard["latents"], encode_video_latents(pipe, pixels))
    # (z - mean) / std up to the rounding of one multiply by 1 / std (the pipeline's form)
    tol = 4 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(shard["latents"], (z - mean) / std, rtol=tol,
                               atol=tol * float(z.abs().max() / std.min()))
    assert (shard["latents"] - z).abs().max() > 0.1  # the statistics are not the identity
    # captions: WanPipeline.encode_prompt's sequence, its zero padding trimmed to the shard's longest caption
    emb, _ = pipe.encode_prompt(CAPTIONS[:4], do_classifier_free_guidance=False, max_sequence_length=MAX_TOKENS)
    length = shard["prompt_embeds"].shape[1]
    assert length < MAX_TOKENS and not emb[:, length:].any()
    assert torch.equal(shard["prompt_embeds"], emb[:, :length])
    mask = shard["prompt_attention_mask"].bool()
    assert torch.equal(mask, emb[:, :length].abs().amax(-1) > 0)  # 1 exactly on the caption's rows
    # null condition: the empty negative prompt WanPipeline's guidance uses
    null = load_file(str(videos["latents"] / "null_condition.safetensors"))
    _, neg = pipe.encode_prompt(CAPTIONS[:1], do_classifier_free_guidance=True, max_sequence_length=MAX_TOKENS)
    n = null["prompt_embeds"].shape[1]
    assert n >= 1 and torch.equal(null["prompt_embeds"], neg[:, :n]) and not neg[:, n:].any()


def test_decoding_a_denormalised_latent_is_the_pipelines_decode_path(videos):
    """decode(denormalise(latent)) equals what WanPipeline.__call__ decodes from the same latents, bit for bit:
    the pipeline's last step is handed the stored latent (`callback_on_step_end`), so its own decode runs on it."""
    pipe = video_pipeline()
    latent = LatentShards(videos["latents"])[2]["latents"][None]

    def substitute(p, i, t, kwargs):
        return {"latents": latent.clone()}
    theirs = pipe(prompt=CAPTIONS[2], height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
                  guidance_scale=1.0, max_sequence_length=MAX_TOKENS, output_type="pt",
                  callback_on_step_end=substitute, callback_on_step_end_tensor_inputs=["latents"]).frames
    with torch.no_grad():
        video = pipe.vae.decode(denormalise_video_latents(pipe.vae, latent), return_dict=False)[0]
    ours = pipe.video_processor.postprocess_video(video, output_type="pt")
    assert ours.shape == (1, FRAMES, 3, HEIGHT, WIDTH) and float(ours.std()) > 0.01
    assert torch.equal(ours, theirs)


def _pipeline_calls(pipe, caption: str, steps: int = 2) -> list[dict]:
    """Every transformer call of a guided WanPipeline run (cond, uncond per step): keyword inputs and output."""
    calls: list[dict] = []

    def pre(module, args, kwargs):
        calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    def post(module, args, kwargs, out):
        calls[-1]["out"] = out[0].clone()
    handles = [pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
               pipe.transformer.register_forward_hook(post, with_kwargs=True)]
    try:
        pipe(prompt=caption, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=steps,
             guidance_scale=5.0, max_sequence_length=MAX_TOKENS, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_call_is_the_pipelines_transformer_call_bit_for_bit(videos, dtype):
    """The objective's model call on a shard's caption (and on the null condition) at the pipeline's own latents
    and timestep has the pipeline's inputs and gives its output, bit for bit: text zero-padded back to
    max_sequence_length, 1000 s as the scheduler's timestep, the same keywords, latents and text cast to the
    transformer's dtype as the pipeline casts them (float32, and bfloat16 as `from_pretrained(torch_dtype=...)`
    loads it); also with ILF attached and bypassed."""
    from tiny_wan import as_loaded

    pipe = video_pipeline()
    as_loaded(pipe.transformer, dtype)
    index = 3
    calls = _pipeline_calls(pipe, CAPTIONS[index])
    assert len(calls) == 4  # 2 steps x (cond, uncond)
    shards = LatentShards(videos["latents"])
    item = shards[index]
    cond = {"prompt_embeds": item["prompt_embeds"][None], "prompt_attention_mask": item["prompt_attention_mask"][None]}
    null = {"prompt_embeds": shards.null["prompt_embeds"].float(),
            "prompt_attention_mask": shards.null["prompt_attention_mask"].long()}
    obj = make_objective("auto", "fast", pipe, max_sequence_length=shards.meta["max_sequence_length"])
    assert isinstance(obj, WanFlowObjective) and obj.time_scale == 1000.0
    ours: list[dict] = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: ours.append(dict(kw)), with_kwargs=True)
    outs = []
    with torch.no_grad():
        for k, call in enumerate(calls):
            kwargs = obj.inputs(cond if k % 2 == 0 else null)
            s = call["timestep"].double() / obj.time_scale
            outs.append(obj.velocity(call["hidden_states"], s, kwargs))
    handle.remove()
    assert calls[0]["timestep"].dtype == torch.int64  # UniPC with flow sigmas: integer timesteps (flow_shift 3)
    assert {int(c["timestep"][0]) for c in calls} == {999, 750}
    for call, mine, out in zip(calls, ours, outs):
        assert set(mine) == {"hidden_states", "timestep", "encoder_hidden_states", "return_dict"}
        assert torch.equal(mine["hidden_states"], call["hidden_states"])
        assert torch.equal(mine["encoder_hidden_states"], call["encoder_hidden_states"])
        assert mine["encoder_hidden_states"].shape == (1, MAX_TOKENS, 16) and mine["hidden_states"].dtype == dtype
        assert mine["timestep"].dtype == torch.float32 and torch.equal(mine["timestep"], call["timestep"].float())
        assert torch.equal(out, call["out"].float())
    assert not torch.equal(outs[0], outs[1])  # the caption and the null condition differ
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    with torch.no_grad(), bypass(tr):
        again = obj.velocity(calls[0]["hidden_states"], calls[0]["timestep"].double() / 1000, obj.inputs(cond))
    assert torch.equal(again, calls[0]["out"].float())


def test_objective_follows_the_scheduler_and_counts_block_forwards(videos):
    from tiny_wan import flow_euler

    pipe = video_pipeline()
    assert objective_of("auto", pipe) == "flow" and objective_of("flow", pipe) == "flow"
    with pytest.raises(ILFConfigError, match="objective"):
        objective_of("epsilon", pipe)
    euler = video_pipeline()
    euler.scheduler = flow_euler()
    unipc_sigmas = make_objective("auto", "fast", pipe).sigmas
    assert torch.equal(make_objective("auto", "fast", euler).sigmas, unipc_sigmas)  # both shift 3.0
    s = torch.linspace(1, 1000, 1000, dtype=torch.float64) / 1000
    torch.testing.assert_close(unipc_sigmas, 3 * s / (1 + 2 * s), rtol=1e-6, atol=1e-7)  # UniPC's flow_shift
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    stream = TrainStream(LatentShards(videos["latents"]), 0, 1000, 0.0)
    batch = collate([stream[p] for p in range(2)])
    assert batch["latents"].shape == (2, 4, 2, 4, 4)
    n, m, k = len(model_blocks(tr)), LOOP[1] - LOOP[0] + 1, 3
    for mode, want in {"none": n + m + 1, "fast": 2 * n + m + 1, "standard": (k + 1) * n + m + 1}.items():
        obj = make_objective("flow", mode, pipe, teacher_steps=k, max_sequence_length=MAX_TOKENS)
        with count_block_forwards(tr) as counter:
            loss, terms = obj(batch)
        assert counter.count == want, (mode, counter.count, want)
        assert loss.shape == (2,) and torch.isfinite(loss).all() and ("loss_distill" in terms) == (mode != "none")


def test_tiny_wan_trains_and_its_checkpoint_attaches(videos, tmp_path):
    """20 steps of `fast`: the probe loss falls, the scales leave 0, the backbone stays frozen; the final folder
    loads into a fresh stock WanPipeline, whose guided run then differs from the plain one."""
    pipe = video_pipeline()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = _config(videos, iterations=20, log_interval=10, cond_dropout=0.25)
    final = train(cfg, tmp_path / "run", pipeline=pipe, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / DIAGNOSTICS_NAME).read_text().splitlines()]
    first, last = recs[0], recs[-1]
    assert last["iteration"] == 20
    # effect sizes: Adam moves a scale by at most lr = 0.01 a step; the probe loss must fall by far more than noise
    assert last["loss"] < 0.95 * first["loss"], (first["loss"], last["loss"])
    scales = torch.tensor(last["scales"])
    assert scales.shape == (LOOP[1] - LOOP[0] + 1,) and float(scales.abs().max()) > 0.05, last["scales"]
    assert max(last["feedback_ratio"]) > 0.01 and last["output_change"] > 0
    for key, value in before.items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key
    fresh, plain = video_pipeline(), video_pipeline()
    load_feedback(fresh, final)
    torch.testing.assert_close(fresh.transformer.ilf_scales, pipe.transformer.ilf_scales, rtol=0, atol=0)
    run = dict(prompt=CAPTIONS[0], height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2,
               max_sequence_length=MAX_TOKENS, output_type="latent")
    with_ilf = fresh(generator=torch.Generator().manual_seed(0), **run).frames
    without = plain(generator=torch.Generator().manual_seed(0), **run).frames
    assert torch.isfinite(with_ilf).all() and (with_ilf - without).abs().max() > 1e-3


@pytest.mark.parametrize("mode,precision,checkpointing", [("standard", "no", True), ("none", "bf16", False)])
def test_other_modes_train(videos, tmp_path, mode, precision, checkpointing):
    cfg = _config(videos, iterations=2, distill=mode, mixed_precision=precision, timestep_sampling="logit-normal",
                  gradient_checkpointing=checkpointing)
    train(cfg, tmp_path / "run", pipeline=video_pipeline(), progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rec = [r for r in log if "loss" in r][-1]
    assert ("loss_distill" in rec) == (mode != "none") and np.isfinite(rec["loss"])
    assert any(abs(s) > 0 for s in rec["scales"])


def test_what_video_training_cannot_take_is_refused(videos, tmp_path):
    with pytest.raises(ILFConfigError, match="data.source"):  # image pairs for a video backbone
        precompute(_image_source_config(videos, tmp_path / "a"), tmp_path / "a", pipeline=video_pipeline(1),
                   progress=False)
    with pytest.raises(ILFConfigError, match="data.num_frames"):
        cfg = _config(videos)
        cfg.data.num_frames = 6
        precompute(cfg, tmp_path / "b", pipeline=video_pipeline(1), progress=False)
    with pytest.raises(ILFConfigError, match="data.width"):
        cfg = _config(videos)
        cfg.data.width = 40
        precompute(cfg, tmp_path / "c", pipeline=video_pipeline(1), progress=False)
    i2v = video_pipeline(1)
    i2v.register_modules(transformer=tiny_wan(num_layers=1, image_dim=16))
    with pytest.raises(ILFConfigError, match="image_dim"):
        precompute(_config(videos), tmp_path / "d", pipeline=i2v, progress=False)
    two_experts = video_pipeline(1)
    two_experts.register_modules(transformer_2=tiny_wan(num_layers=1))
    with pytest.raises(ILFConfigError, match="transformer_2"):
        train(_config(videos), tmp_path / "run", pipeline=two_experts, progress=False)
    other = video_pipeline(1)
    other.register_modules(transformer=tiny_wan(num_layers=2, text_dim=8))
    with pytest.raises(ILFConfigError, match="caption embeddings of dim 16"):
        train(_config(videos), tmp_path / "run", pipeline=other, progress=False)
    assert not (tmp_path / "run").exists()
    from tiny_sd3 import tiny_sd3_pipeline

    with pytest.raises(ILFConfigError, match="an image source"):
        precompute(_config(videos), tmp_path / "e", pipeline=tiny_sd3_pipeline(), progress=False)


def _image_source_config(videos, out):
    cfg = _config(videos)
    cfg.data.source = "captions"
    cfg.data.latents_dir = str(out)
    return cfg


def test_the_commands_train_a_wan_pipeline_folder_from_a_yaml(videos, tmp_path, capsys):
    """`ilf precompute` then `ilf train` as typed, on a saved WanPipeline folder named as the backbone (the tiny
    umT5 and its tokenizer included); the run's final folder attaches to the pipeline loaded back."""
    import yaml
    from diffusers import WanPipeline

    from ilf.cli import main

    video_pipeline().save_pretrained(tmp_path / "pipe")
    cfg = video_config(str(tmp_path / "pipe"), videos["data"], tmp_path / "latents", iterations=2).to_dict()
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["precompute", "--config", str(tmp_path / "train.yaml"), "--out", str(tmp_path / "latents"),
                 "--no-progress"]) == 0
    assert f"{len(CAPTIONS)} samples (t2v, latents [4, 2, 4, 4])" in capsys.readouterr().out
    assert torch.equal(load_file(str(tmp_path / "latents" / "shard_00001.safetensors"))["latents"],
                       load_file(str(videos["latents"] / "shard_00001.safetensors"))["latents"])
    assert main(["train", "--config", str(tmp_path / "train.yaml"), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    pipe = WanPipeline.from_pretrained(str(tmp_path / "pipe"))
    load_feedback(pipe, tmp_path / "run" / "final")
    assert float(pipe.transformer.ilf_scales.abs().max()) > 0
