"""Toy world: data determinism, caption grammar, bad input, tiny pipelines end to end, shipped weights."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ilf.errors import ILFConfigError, MissingAssetError
from ilf.toy import data as D
from ilf.toy.backbones import (CAPTION_CHANNELS, DIT_CONFIG, NUM_LAYERS, PIXART_CONFIG, ToyPixelVAE,
                               build_transformer)
from ilf.toy.encoder import ENCODER_CONFIG, MAX_SEQUENCE_LENGTH, build_caption_encoder, encode_captions
from ilf.toy.pipelines import ASSETS, check_assets, load_toy_pipeline, required_files, toy_call_kwargs
from ilf.toy.pretrain import PretrainConfig, pretrain

torch.set_num_threads(1)


# --- data -----------------------------------------------------------------------------------------

def test_shapes_dataset_is_deterministic_and_prefix_stable():
    a, ca, attrs = D.make_shapes_dataset(12, seed=3)
    b, cb, _ = D.make_shapes_dataset(5, seed=3)
    c, cc, _ = D.make_shapes_dataset(12, seed=4)
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a[:5], b) and ca[:5] == cb
    assert not np.array_equal(a, c) and ca != cc
    assert [D.Scene(**x).caption() for x in attrs] == ca


def test_render_draws_the_colour_in_the_named_region():
    scene = D.Scene(shape="square", color="red", size="large", position="left", count="one")
    img = D.render_scene(scene, resolution=32, seed=0).astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 100)
    assert red[:, :16].sum() > 20 and red[:, 16:].sum() == 0
    assert np.array_equal(img, D.render_scene(scene, resolution=32, seed=0))


def test_captions_round_trip_through_the_parser():
    for scene in D.sample_scenes(200, seed=0):
        assert D.parse_caption(scene.caption()) == scene.attributes()
    assert D.parse_caption("Two red circles on the left") == {"count": "two", "color": "red", "shape": "circle",
                                                              "position": "left"}
    assert D.toy_prompts(4, 1) == D.toy_prompts(4, 1) and len(set(D.toy_prompts(50, 1))) > 20


@pytest.mark.parametrize("caption", ["two red hexagons on the left", "one blue circle on the moon"])
def test_parse_caption_rejects_unknown_words(caption):
    with pytest.raises(ValueError, match="unknown word"):
        D.parse_caption(caption)


def test_unknown_shape_or_colour_names_value_and_allowed():
    with pytest.raises(ILFConfigError, match="hexagon.*circle"):
        D.Scene(shape="hexagon", color="red", size="small", position="left", count="one")
    with pytest.raises(ValueError, match="color='mauve'.*'red'"):
        D.sample_scenes(3, seed=0, colors=["red", "mauve"])
    with pytest.raises(ValueError, match="shapes"):
        D.sample_scenes(3, seed=0, shapes=[])
    restricted = D.sample_scenes(30, seed=0, shapes=["circle"], colors=["blue", "red"])
    assert {s.shape for s in restricted} == {"circle"} and {s.color for s in restricted} <= {"blue", "red"}


def test_digits_are_upsampled_with_labels():
    x, y = D.load_digits_dataset(resolution=16)
    assert x.shape == (1797, 16, 16, 3) and x.dtype == np.uint8 and set(y.tolist()) == set(range(10))
    assert np.array_equal(x[..., 0], x[..., 2]) and x.max() > 200


# --- encoder, backbones -----------------------------------------------------------------------------

def test_caption_encoder_matches_pipeline_conventions():
    tok, enc = build_caption_encoder(seed=0)
    assert CAPTION_CHANNELS == ENCODER_CONFIG["d_model"] == PIXART_CONFIG["caption_channels"]
    ids = tok("two small red circles on the left").input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok("two purple dragons").input_ids[2] == tok.unk_token_id
    emb, mask = encode_captions(tok, enc, ["one large blue cross at the top", ""])
    assert emb.shape == (2, MAX_SEQUENCE_LENGTH, ENCODER_CONFIG["d_model"]) and mask[1].sum() == 1
    assert not any(p.requires_grad for p in enc.parameters())
    _, enc2 = build_caption_encoder(seed=0)
    assert torch.equal(encode_captions(tok, enc2, ["one large blue cross at the top"])[0], emb[:1])


def test_backbones_are_14_blocks_of_the_real_classes():
    assert PIXART_CONFIG["num_layers"] == DIT_CONFIG["num_layers"] == NUM_LAYERS == 14
    assert DIT_CONFIG["num_embeds_ada_norm"] == 1000  # DiTPipeline's null class
    for task, cls in (("t2i", "PixArtTransformer2DModel"), ("c2i", "DiTTransformer2DModel")):
        m = build_transformer(task, seed=0)
        assert type(m).__name__ == cls and len(m.transformer_blocks) == 14
        assert torch.equal(next(m.parameters()), next(build_transformer(task, seed=0).parameters()))
    with pytest.raises(ILFConfigError, match="task"):
        build_transformer("t2v")


def test_pixel_vae_is_identity():
    vae = ToyPixelVAE()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(vae.encode(x).latent_dist.sample(), x) and torch.equal(vae.decode(x).sample, x)
    assert vae.config.scaling_factor == 1.0 and len(vae.config.block_out_channels) == 1


# --- pretraining + pipelines on tiny runs --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """Backbones written by 2 pretraining steps (real code path, tiny batch) in a temporary asset root."""
    root = tmp_path_factory.mktemp("assets")
    for task in ("t2i", "c2i"):
        cfg = PretrainConfig(task=task, steps=2, batch_size=2, num_images=16, warmup=1)
        pretrain(cfg, root / f"toy-{task}", state_dir=root / f"state-{task}")
    return root


def test_pretrain_writes_safetensors_and_json(tiny_assets):
    for task in ("t2i", "c2i"):
        folder = check_assets(task, tiny_assets)
        meta = json.loads((folder / "pretrain.json").read_text())
        assert meta["steps_done"] == 2 and np.isfinite(meta["final_loss"]) and "provenance" in meta


def test_pretrain_resume_equals_straight_run(tmp_path):
    cfg = PretrainConfig(task="c2i", steps=2, batch_size=2, warmup=1)
    pretrain(cfg, tmp_path / "a", state_dir=tmp_path / "sa")
    pretrain(PretrainConfig(task="c2i", steps=1, batch_size=2, warmup=1), tmp_path / "b", state_dir=tmp_path / "sb")
    pretrain(cfg, tmp_path / "b", state_dir=tmp_path / "sb", resume=True)
    w = "transformer/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / w).read_bytes() == (tmp_path / "b" / w).read_bytes()


def test_second_stage_records_its_chain_and_bf16_is_cuda_only(tmp_path):
    """`--init-from` continues from a written backbone and nests the earlier stage's record; `--bf16` is a
    CUDA autocast, so on a CPU it changes nothing (bit-identical weights) but is recorded in the command."""
    pretrain(PretrainConfig(task="c2i", steps=1, batch_size=2, warmup=1), tmp_path / "s1", state_dir=tmp_path / "st1")
    for name, bf16 in (("a", False), ("b", True)):
        cfg = PretrainConfig(task="c2i", steps=1, batch_size=2, warmup=1, min_snr_gamma=5.0, bf16=bf16)
        pretrain(cfg, tmp_path / name, state_dir=tmp_path / f"st{name}", init_from=tmp_path / "s1")
    w = "transformer/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / w).read_bytes() == (tmp_path / "b" / w).read_bytes()
    assert (tmp_path / "a" / w).read_bytes() != (tmp_path / "s1" / w).read_bytes()
    meta = json.loads((tmp_path / "b" / "pretrain.json").read_text())
    assert meta["previous_stage"]["steps_done"] == 1 and meta["command"].endswith("--bf16")
    assert "--min-snr-gamma 5.0" in meta["command"] and f"--init-from {tmp_path / 's1'}" in meta["command"]


def test_tiny_pipelines_run_end_to_end(tiny_assets):
    t2i = load_toy_pipeline("t2i", root=tiny_assets)
    assert type(t2i).__name__ == "PixArtAlphaPipeline" and t2i.scheduler.config.algorithm_type == "dpmsolver++"
    out = t2i(prompt=["two small red circles on the left", "one large cyan cross at the top"], num_inference_steps=2,
              generator=torch.Generator().manual_seed(0), output_type="np", **toy_call_kwargs("t2i")).images
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()
    c2i = load_toy_pipeline("c2i", root=tiny_assets)
    assert type(c2i).__name__ == "DiTPipeline"
    imgs = c2i(class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(imgs) == 2 and imgs[0].size == (32, 32)


def test_solver_gap_reports_per_step_error(tiny_assets):
    from ilf.toy.pipelines import solver_gap

    gap = solver_gap("c2i", steps=(2, 3), reference_steps=4, n=2, root=tiny_assets)
    assert set(gap) == {2, 3} and all(np.isfinite(m) and len(per) == 2 for m, _, per in gap.values())


def test_step_sweep_pairs_images_across_step_counts(tiny_assets):
    from ilf.toy.sweep import step_sweep

    recs = {r["steps"]: r for r in step_sweep("c2i", [3, 2], n=4, root=tiny_assets, progress=False)}
    assert set(recs) == {2, 3} and all(r["reference_steps"] == 3 and r["metric"] == "toy_class_accuracy" for r in recs.values())
    assert recs[3]["diff_vs_reference"] == 0.0 == recs[3]["diff_ci_low"] == recs[3]["diff_ci_high"]  # paired with itself
    assert recs[2]["diff_vs_reference"] == pytest.approx(recs[2]["mean"] - recs[3]["mean"])
    with pytest.raises(ValueError, match="positive"):
        step_sweep("c2i", [0, 2], n=2, root=tiny_assets)


def test_missing_weight_file_names_file_and_command(tmp_path):
    with pytest.raises(MissingAssetError, match=r"transformer/config.json.*ilf toy pretrain --task c2i"):
        load_toy_pipeline("c2i", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        (tmp_path / "toy-t2i" / "transformer").mkdir(parents=True)
        for f in ("config.json", "diffusion_pytorch_model.safetensors"):
            (tmp_path / "toy-t2i" / "transformer" / f).write_text("{}")
        check_assets("t2i", tmp_path)


# --- shipped weights (skipped only until they exist) --------------------------------------------

def _shipped(task: str) -> bool:
    return all((ASSETS / f"toy-{task}" / f).is_file() for f in required_files(task))


@pytest.mark.parametrize("task", ["t2i", "c2i"])
def test_shipped_backbone_loads_and_denoises(task):
    if not _shipped(task):
        pytest.skip(f"toy-{task} weights not shipped yet (ilf toy pretrain --task {task})")
    pipe = load_toy_pipeline(task)
    model = pipe.transformer
    assert len(model.transformer_blocks) == 14
    # The trained backbone predicts the noise of real data far better than chance (MSE 1).
    if task == "c2i":
        x, y = D.load_digits_dataset()
        kw = {"class_labels": torch.from_numpy(y[:8])}
    else:
        x, caps, _ = D.make_shapes_dataset(8, seed=11)
        emb, mask = pipe.encode_prompt(caps, do_classifier_free_guidance=False, device="cpu",
                                       clean_caption=False, max_sequence_length=MAX_SEQUENCE_LENGTH)[0::2]
        kw = {"encoder_hidden_states": emb, "encoder_attention_mask": mask,
              "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    x0 = torch.from_numpy(x[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.full((8,), 300)
    a = pipe.scheduler.alphas_cumprod[300]
    with torch.no_grad():
        pred = model(a.sqrt() * x0 + (1 - a).sqrt() * noise, timestep=t, **kw).sample
    assert torch.nn.functional.mse_loss(pred, noise).item() < 0.1
    total = sum(f.stat().st_size for f in (ASSETS / f"toy-{task}").rglob("*") if f.is_file())
    assert total < 10e6


@pytest.mark.parametrize("how", ["truncated", "empty", "other_bytes"])
def test_caption_embedding_cache_with_a_damaged_file_is_computed_again(tmp_path, how):
    """The cached caption embeddings are used only while the file matches the sha256 in their record; a file cut
    short, emptied or replaced (a crash between the file and its record) is computed again, equal to the first."""
    from safetensors.torch import save_file

    from ilf.toy.pretrain import prepare_data

    cfg = PretrainConfig(task="t2i", num_images=6)
    first = prepare_data(cfg, tmp_path / "out", tmp_path / "state")
    cache = tmp_path / "state" / "caption_embeddings.safetensors"
    assert json.loads(cache.with_suffix(".json").read_text())["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    if how == "truncated":
        cache.write_bytes(cache.read_bytes()[:-64])
    elif how == "empty":
        cache.write_bytes(b"")
    else:  # a loadable file, but not the recorded one
        save_file({k: torch.zeros_like(v) for k, v in first.items() if k in ("embeddings", "mask")}, str(cache))
    again = prepare_data(cfg, tmp_path / "out", tmp_path / "state")
    for k in ("embeddings", "mask"):
        assert torch.equal(again[k], first[k])
    assert json.loads(cache.with_suffix(".json").read_text())["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
