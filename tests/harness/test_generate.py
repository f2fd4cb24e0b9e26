"""`ilf generate` (the generation record) on a tiny random DiT pipeline: shard-count independence, resume, records."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler

from disk import disk_events, renamed_onto  # noqa: F401 (fixture)

from ilf.harness.generate import derive_seed, generate_row, image_jobs, merge_shards, shard_batches
from ilf.io import read_jsonl
from ilf.harness.workflow_config import get_row, resolve

RECORD_FIELDS = {"row", "index", "prompt_id", "prompt", "class_label", "sample_index", "seed", "image_path",
                 "seconds_per_image", "block_forwards_measured", "block_forwards_analytic", "flops_per_image", "device",
                 "dtype",
                 "config_hash", "git_commit", "versions", "date"}


def tiny_pipeline(row=None, device="cpu", calls=None):
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=8, patch_size=2, norm_type="ada_norm_zero",
                                        num_embeds_ada_norm=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                        norm_num_groups=8, sample_size=8)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DPMSolverMultistepScheduler(),
                       id2label={i: str(i) for i in range(10)})
    if calls is not None:
        inner = pipe.__call__
        pipe.__class__ = type("CountingDiT", (DiTPipeline,), {})
        pipe.__class__.__call__ = lambda self, **kw: (calls.append(len(kw["class_labels"])), inner(**kw))[1]
    return pipe


def config(tmp_path: Path, **row) -> dict:
    base = {"name": "r", "table": "table2", "backbone": "toy-c2i", "steps": 3, "method": "baseline",
            "prompts": "toy-digits", "num_prompts": 3, "images_per_prompt": 2, "batch_size": 2,
            "metrics": ["toy_fid"], "guidance_scale": 2.0}
    base.update(row)
    return resolve({"name": "t", "world": "toy", "out_dir": str(tmp_path / "out"), "seed": 7,
                    "backbones": {"toy-c2i": {"task": "c2i", "num_blocks": 2, "resolution": 8}}, "rows": [base]})


def run(row, shard=0, n=1, calls=None):
    return generate_row(row, shard, n, device="cpu", warmup=0, progress=False,
                        pipeline_factory=lambda r, d: tiny_pipeline(calls=calls))


def test_shard_batches_partition_whole_batches():
    for n in (1, 2, 3, 5):
        got = [i for k in range(n) for b in shard_batches(11, 3, k, n) for i in b]
        assert got == list(range(11))
        assert all(len(b) == 3 or b[-1] == 10 for k in range(n) for b in shard_batches(11, 3, k, n))


def test_seeds_depend_on_prompt_and_sample_not_on_row(tmp_path):
    a = image_jobs(get_row(config(tmp_path), "r"))
    b = image_jobs(get_row(config(tmp_path, name="other", steps=5, method="cache",
                                  cache={"location": "inner", "num_cached": 1, "interval": 2}), "other"))
    assert [j.seed for j in a] == [j.seed for j in b]
    assert len({j.seed for j in a}) == len(a) == 6
    assert a[3].seed == derive_seed(7, "toy-digits", "digit1", 1) and a[3].class_label == 1


@pytest.mark.parametrize("method", ["baseline", "cache"])
def test_same_images_for_any_shard_count_and_complete_records(tmp_path, method):
    extra = {"cache": {"location": "inner", "num_cached": 1, "interval": 2}} if method == "cache" else {}
    one = get_row(config(tmp_path / "one", method=method, **extra), "r")
    three = get_row(config(tmp_path / "three", method=method, **extra), "r")
    run(one)
    merge_shards(one, 1)
    for k in range(3):
        run(three, k, 3)
    merge_shards(three, 3)
    recs1 = read_jsonl(Path(one["generation_dir"]) / "generation.jsonl")
    recs3 = read_jsonl(Path(three["generation_dir"]) / "generation.jsonl")
    assert [r["index"] for r in recs1] == list(range(6)) == [r["index"] for r in recs3]
    for r1, r3 in zip(recs1, recs3):
        assert RECORD_FIELDS <= set(r1)
        assert r1["image_path"] == f"images/{r1['index']:06d}.png" and r1["seed"] == r3["seed"]
        assert (Path(one["generation_dir"]) / r1["image_path"]).read_bytes() == \
            (Path(three["generation_dir"]) / r3["image_path"]).read_bytes()
        assert r1["block_forwards_measured"] == r1["block_forwards_analytic"]
        assert r1["seconds_per_image"] > 0 and r1["device"].startswith("cpu")
    assert recs1[0]["block_forwards_analytic"] == (2 * 3 if method == "baseline" else 2 * 3 - 1 * (3 - 2))
    # analytic FLOPs per image from the counts: the row's config on the tiny DiT (16 tokens per image)
    from ilf import CacheConfig
    from ilf.flops import expected_flops, model_flops

    cache = CacheConfig("inner", 1, 2) if method == "cache" else None
    assert recs1[0]["flops_per_image"] == expected_flops(cache, model_flops(tiny_pipeline().transformer, 16), 3)
    assert not list(Path(one["generation_dir"]).rglob("*.tmp"))


def test_resume_regenerates_only_missing_images(tmp_path):
    row = get_row(config(tmp_path), "r")
    calls: list[int] = []
    run(row, calls=calls)
    assert calls == [2, 2, 2]
    images = Path(row["generation_dir"]) / "images"
    stamps = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png")}
    (images / "000004.png").unlink()  # as if the job was killed before writing it
    calls.clear()
    run(row, calls=calls)
    assert calls == [2]  # only the batch holding index 4 runs again
    assert (images / "000004.png").exists()
    assert {p.name: p.stat().st_mtime_ns for p in images.glob("*.png") if p.name != "000004.png"} == \
        {k: v for k, v in stamps.items() if k != "000004.png"}
    calls.clear()
    run(row, calls=calls)
    assert calls == []  # nothing left to do
    # a changed generation setting invalidates the old images instead of reusing them
    changed = get_row(config(tmp_path, steps=4), "r")
    calls.clear()
    run(changed, calls=calls)
    assert calls == [2, 2, 2]


def test_block_forward_mismatch_fails_the_job(tmp_path, monkeypatch):
    import ilf.harness.generate as gen

    monkeypatch.setattr(gen, "analytic_block_forwards", lambda cfg, n, s: n * s + 1)
    with pytest.raises(RuntimeError, match="block forwards"):
        run(get_row(config(tmp_path), "r"))
    assert not list((Path(config(tmp_path)["rows"][0]["generation_dir"]) / "images").glob("*.png"))


def test_merge_refuses_missing_shards(tmp_path):
    row = get_row(config(tmp_path), "r")
    run(row, 0, 2)
    with pytest.raises(FileNotFoundError, match="shard 1 of 2"):
        merge_shards(row, 2)


def test_dynamic_methods_record_dynamic_analytic_count():
    from ilf.harness.generate import analytic_block_forwards
    from ilf.peers import FirstBlockCacheConfig

    assert analytic_block_forwards(FirstBlockCacheConfig(threshold=0.1), 14, 20) == "dynamic"
    assert analytic_block_forwards(None, 14, 20) == 280


# ------------------------------------------------------------------ a recorded image that is not intact
def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """sha256 of every image of the row generated in one go (the files a resumed run must reproduce)."""
    row = get_row(config(tmp_path_factory.mktemp("whole")), "r")
    run(row)
    return {p.name: _sha(p) for p in sorted((Path(row["generation_dir"]) / "images").glob("*.png"))}


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other_image":  # a valid PNG, but not the one recorded
        path.write_bytes(other.read_bytes())
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize("how,old_records", [(how, False) for how in ("truncated", "empty", "other_image", "missing")]
                         + [(how, True) for how in ("truncated", "empty", "missing")])  # old: no sha256 to compare
def test_resume_makes_a_damaged_recorded_image_again_identically(tmp_path, uninterrupted, how, old_records):
    """A PNG whose record was written but whose file is cut short, empty, another image or gone (a crash between
    the record and the PNG's data) is made again on resume, byte-identical to an uninterrupted run."""
    import json

    row = get_row(config(tmp_path), "r")
    run(row)
    row_dir = Path(row["generation_dir"])
    images = row_dir / "images"
    progress = next((row_dir / "shards").glob("*.progress.jsonl"))
    recs = read_jsonl(progress)
    assert {r["index"]: (r["image_bytes"], r["image_sha256"]) for r in recs} == \
        {i: ((images / f"{i:06d}.png").stat().st_size, uninterrupted[f"{i:06d}.png"]) for i in range(6)}
    if old_records:  # records written before the size and sha256 were stored: the file must decode
        progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("image_bytes", "image_sha256")})
                                    + "\n" for r in recs))
    _damage(images / "000003.png", how, images / "000004.png")
    stamps = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png") if p.name != "000003.png"}
    calls: list[int] = []
    run(row, calls=calls)
    assert calls == [2]  # only the batch holding index 3 runs again
    assert {p.name: _sha(p) for p in sorted(images.glob("*.png"))} == uninterrupted
    assert {p.name: p.stat().st_mtime_ns for p in images.glob("*.png") if p.name != "000003.png"} == stamps
    merge_shards(row, 1)
    final = {r["index"]: r for r in read_jsonl(row_dir / "generation.jsonl")}
    assert final[3]["image_sha256"] == uninterrupted["000003.png"]
    calls.clear()
    run(row, calls=calls)
    assert calls == []  # the new record and its file agree: nothing left to do


def test_old_records_with_intact_images_are_not_made_again(tmp_path):
    import json

    row = get_row(config(tmp_path), "r")
    run(row)
    progress = next((Path(row["generation_dir"]) / "shards").glob("*.progress.jsonl"))
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("image_bytes", "image_sha256")})
                                + "\n" for r in read_jsonl(progress)))
    calls: list[int] = []
    run(row, calls=calls)
    assert calls == []


def test_each_image_is_on_the_disk_before_its_record(tmp_path, disk_events):
    """Order of the disk flushes for every image: PNG data (fsync of the temporary file), rename onto its name,
    the images folder, and only then the progress record naming it."""
    row = get_row(config(tmp_path), "r")
    run(row)
    row_dir = Path(row["generation_dir"]).resolve()
    progress = str(next((row_dir / "shards").glob("*.progress.jsonl")))
    records = [k for k, e in enumerate(disk_events) if e == ("fsync", progress)]
    assert len(records) == 6
    for i in range(6):
        k, tmp = renamed_onto(disk_events, row_dir / "images" / f"{i:06d}.png")
        assert ("fsync", tmp) in disk_events[:k]
        folder = k + 1 + disk_events[k + 1:].index(("fsync", str(row_dir / "images")))
        assert folder < records[i], disk_events


@pytest.mark.parametrize("cls,binning", [("PixArtAlphaPipeline", True), ("PixArtSigmaPipeline", True),
                                         ("SanaPipeline", True), ("FluxPipeline", False),
                                         ("StableDiffusion3Pipeline", False), ("QwenImagePipeline", False)])
def test_call_arguments_are_ones_the_backbones_pipeline_takes(cls, binning):
    """A real text-to-image row calls its stock pipeline at the row's square resolution; resolution binning is
    turned off where the pipeline has it (PixArt, Sana), and not passed to FLUX's, SD3's and Qwen-Image's
    `__call__`, which have no such argument (a TypeError at the first image otherwise)."""
    import inspect

    import diffusers

    from ilf.harness.generate import call_kwargs

    pipe_cls = getattr(diffusers, cls)
    pipe = object.__new__(pipe_cls)  # the class is what matters: no weights
    kw = call_kwargs({"backbone": "any-t2i", "task": "t2i", "resolution": 1024}, pipe)
    assert kw == {"height": 1024, "width": 1024, **({"use_resolution_binning": False} if binning else {})}
    assert set(kw) <= set(inspect.signature(pipe_cls.__call__).parameters)
