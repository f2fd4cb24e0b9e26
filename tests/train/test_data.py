"""Training data: image+caption and class folders, resumable sharded precompute, deterministic streams."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train_utils import tiny_config, tiny_train_pipeline  # noqa: E402

from ilf.train import precompute  # noqa: E402
from ilf.train.data import LatentShards, MicroBatchSampler, TrainStream, collate  # noqa: E402


def _png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def test_caption_folder_precompute_resumes(tmp_path):
    folder = tmp_path / "pairs"
    caps = ["one small red circle on the left", "two large blue squares at the top", "three small green crosses",
            "one large cyan triangle in the center", "two small purple circles on the right"]
    lines = []
    for i, c in enumerate(caps):
        _png(folder / "img" / f"{i}.png", i)
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": c}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tiny_config("t2i", tmp_path / "lat")
    cfg.data.source, cfg.data.path, cfg.data.num_samples, cfg.data.shard_size = "captions", str(folder), None, 2
    pipe = tiny_train_pipeline("t2i")
    meta = precompute(cfg, tmp_path / "lat", pipeline=pipe, progress=False)
    assert meta["num_samples"] == 5 and meta["latent_shape"] == [4, 8, 8]
    shards = sorted((tmp_path / "lat").glob("shard_*.safetensors"))
    assert len(shards) == 3
    first = load_file(str(shards[0]))
    assert first["latents"].shape == (2, 4, 8, 8)
    # trimmed caption embeddings equal the pipeline's own (untrimmed) encoding on the unmasked tokens
    emb, mask, _, _ = pipe.encode_prompt(caps[:2], do_classifier_free_guidance=False, max_sequence_length=12)
    n = first["prompt_embeds"].shape[1]
    assert n == int(mask.sum(1).max()) < 12
    torch.testing.assert_close(first["prompt_embeds"], emb[:, :n])
    # resume: a deleted shard is re-encoded identically, the others are not touched
    stamp = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    precompute(cfg, tmp_path / "lat", pipeline=pipe, progress=False)
    assert shards[1].is_file()
    assert shards[0].stat().st_mtime_ns == stamp[shards[0].name]
    # another config into the same folder is refused
    cfg.data.shard_size = 3
    with pytest.raises(ValueError, match="shard_size"):
        precompute(cfg, tmp_path / "lat", pipeline=pipe, progress=False)
    ds = LatentShards(tmp_path / "lat")
    assert len(ds) == 5 and ds[4]["prompt_embeds"].shape[0] == int(ds[4]["prompt_attention_mask"].sum())


def test_class_folder_precompute(tmp_path):
    for c, name in enumerate(["n01", "n02", "n03"]):
        for j in range(2):
            _png(tmp_path / "imnet" / name / f"{j}.JPEG".replace("JPEG", "png"), 10 * c + j)
    cfg = tiny_config("c2i", tmp_path / "lat")
    cfg.data.source, cfg.data.path, cfg.data.num_samples = "classes", str(tmp_path / "imnet"), None
    meta = precompute(cfg, tmp_path / "lat", pipeline=tiny_train_pipeline("c2i"), progress=False)
    assert meta["classes"] == ["n01", "n02", "n03"] and meta["num_classes"] == 3 and meta["null_label"] == 1000
    ds = LatentShards(tmp_path / "lat")
    assert [int(ds[i]["class_label"]) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(FileNotFoundError):
        cfg.data.path = str(tmp_path / "missing")
        precompute(cfg, tmp_path / "lat2", pipeline=tiny_train_pipeline("c2i"), progress=False)


def test_stream_is_a_function_of_position_and_ranks_split_the_global_batch(tmp_path):
    cfg = tiny_config("c2i", tmp_path / "lat")
    precompute(cfg, tmp_path / "lat", pipeline=tiny_train_pipeline("c2i"), progress=False)
    shards = LatentShards(tmp_path / "lat")
    a = TrainStream(shards, 0, 1000, 0.5, 1000)
    b = TrainStream(LatentShards(tmp_path / "lat"), 0, 1000, 0.5, 1000)
    for p in (0, 5, 11, 12, 40):
        x, y = a[p], b[p]
        for k in ("latents", "noise", "timestep", "class_label"):
            assert torch.equal(x[k], y[k])
    epoch0 = [a.order(0).tolist(), a.order(1).tolist()]
    assert sorted(epoch0[0]) == list(range(12)) and epoch0[0] != epoch0[1]
    drops = [a[p]["dropped"] for p in range(200)]
    assert 0.35 < np.mean(drops) < 0.65 and all(int(a[p]["class_label"]) == 1000 for p in range(200) if drops[p])
    one = list(MicroBatchSampler(1, 3, 8, 0, 1, 2))
    two = [list(MicroBatchSampler(1, 3, 8, r, 2, 2)) for r in range(2)]
    flat_one = sorted(p for mb in one for p in mb)
    flat_two = sorted(p for r in two for mb in r for p in mb)
    assert flat_one == flat_two == list(range(8, 24))
    batch = collate([a[p] for p in one[0]])
    assert batch["latents"].shape == (4, 4, 8, 8) and batch["class_labels"].shape == (4,)
