"""ILF training on the shipped flow-matching toy `toy-flux` (`configs/train/toy_flux.yaml`): precompute stores the
condition the toy pipeline samples with (the toy caption encoder's sequence + pooled embeddings, the empty caption as
the null condition), and a few iterations of fast flow distillation train the feedback module."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ilf.harness.workflow_config import REPO_ROOT
from ilf.toy.data import make_shapes_dataset
from ilf.toy.flux import toy_flux_embeddings, toy_flux_prompt_kwargs
from ilf.train import precompute, train
from ilf.train.backbone import load_backbone
from ilf.train.config import load_train_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CONFIG = REPO_ROOT / "configs" / "train" / "toy_flux.yaml"
N_SAMPLES, SHARD = 24, 16


def _config(latents, **overrides):
    return load_train_config(CONFIG, {"data.latents_dir": str(latents), "data.num_samples": N_SAMPLES,
                                      "data.shard_size": SHARD, "data.batch_size": 8, **overrides})


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("toy_flux_latents")
    precompute(_config(root), root, progress=False)
    return root


def test_shipped_config_uses_the_default_loop_of_six_blocks():
    """METHOD.md "Architectures": b = round(8N/28), e = round(20N/28) - 1; N = 6 gives 2..3."""
    cfg = load_train_config(CONFIG)
    n = 6
    assert (cfg.feedback.loop_start, cfg.feedback.loop_end) == (round(8 * n / 28), round(20 * n / 28) - 1) == (2, 3)
    assert cfg.backbone == "toy-flux" and cfg.objective == "flow" and cfg.distill == "fast"


def test_shards_hold_the_condition_the_toy_pipeline_samples_with(latents):
    meta = json.loads((latents / "meta.json").read_text())
    assert meta["latent_shape"] == [12, 16, 16] and meta["resolution"] == 32 and meta["max_sequence_length"] == 12
    assert meta["caption_dim"] == meta["pooled_dim"] == 64
    images, captions, _ = make_shapes_dataset(N_SAMPLES, 0, 32)
    shard = load_file(str(latents / "shard_00000.safetensors"))
    emb, pooled = toy_flux_embeddings(captions[:SHARD])
    # every one of the 12 tokens (FluxPipeline passes them all, no mask), exactly the encoder's output
    assert shard["prompt_embeds"].shape == (SHARD, 12, 64) and bool((shard["prompt_attention_mask"] == 1).all())
    assert torch.equal(shard["prompt_embeds"], emb) and torch.equal(shard["pooled_prompt_embeds"], pooled)
    # latents: the pixels in [-1, 1], 2x2 space-to-depth (ToyPixelShuffleVAE), exactly
    pixels = torch.from_numpy(images[:SHARD]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(shard["latents"], torch.nn.functional.pixel_unshuffle(pixels, 2))
    # the null condition is the empty caption, the negative of the toy's true CFG (not FLUX's zeros)
    null = load_file(str(latents / "null_condition.safetensors"))
    negative = toy_flux_prompt_kwargs(["one red circle on the left"], 4.0)
    assert torch.equal(null["prompt_embeds"], negative["negative_prompt_embeds"])
    assert torch.equal(null["pooled_prompt_embeds"], negative["negative_pooled_prompt_embeds"])
    assert null["pooled_prompt_embeds"].abs().sum() > 0


def test_toy_flux_trains(latents, tmp_path):
    """A few iterations: finite losses, the (m, streams) = (2, 2) scales leave 0, the backbone stays frozen."""
    pipe = load_backbone("toy-flux")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = _config(latents, iterations=6, global_batch_size=4, micro_batch_size=4, log_interval=2,
                  checkpoint_interval=6, keep_iterations=[], **{"optim.lr": 1e-2})
    train(cfg, tmp_path / "run", pipeline=pipe, progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    recs = [r for r in log if "loss" in r]
    assert recs[-1]["iteration"] == 6
    assert all(math.isfinite(r[k]) for r in recs for k in ("loss", "loss_recon", "loss_distill"))
    scales = torch.tensor(recs[-1]["scales"])
    # effect size, not a tolerance: Adam moves each scale by about lr = 0.01 per step in its first steps
    assert scales.shape == (2, 2) and float(scales.abs().min()) > 1e-3, scales
    for key, value in before.items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key
