"""`ilf generate` and `ilf metrics` on a text-to-video row: a tiny stock `WanPipeline` (tiny umT5 text encoder),
two clips of 5 frames on the CPU, clip records, resume, and the per-clip metrics against a reference row."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_wan import tiny_wan_text_pipeline

from ilf.harness.generate import generate_row, merge_shards
from ilf.harness.prompts import load_prompt_set
from ilf.harness.workflow_config import get_row, resolve
from ilf.io import read_jsonl

BACKBONE = "wan21-t2v-1.3b"  # the registered name: its pipeline class (WanPipeline) sets the guidance mode
LAYERS, FRAMES, SIDE = 2, 5, 32
TOKENS = 2 * (SIDE // 8 // 2) ** 2  # latents (4, 2, 4, 4), patch (1, 2, 2): 8 video tokens per call
TEXT_TOKENS = 512  # WanPipeline pads the prompt embeddings to max_sequence_length (its default, Wan's 512)
PROMPTS = [p.prompt for p in load_prompt_set("vbench-overall-consistency")]


@pytest.fixture(scope="module", autouse=True)
def tiny_registered_wan():
    """The registered Wan entry with the tiny pipeline's depth: the workflow config checks a registry backbone's
    N against the registry (every analytic count rests on it)."""
    import dataclasses

    from ilf.registry import BACKBONES

    spec = BACKBONES[BACKBONE]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKBONES, BACKBONE, dataclasses.replace(
            spec, transformer_config={**spec.transformer_config, "num_layers": LAYERS}))
        yield


def config(tmp_path: Path, guidance_scale: float = 5.0, **test_row) -> dict:
    base = {"table": "video", "backbone": BACKBONE, "prompts": "vbench-overall-consistency", "num_prompts": 2,
            "batch_size": 1, "guidance_scale": guidance_scale}
    rows = [{**base, "name": "ref", "steps": 3, "method": "baseline"},
            {**base, "name": "fast", "steps": 2, "method": "baseline", "reference_row": "ref",
             "metrics": ["psnr_ref", "ssim_ref", "lpips_ref", "clip_score"], **test_row}]
    return resolve({"name": "t", "world": "paper", "out_dir": str(tmp_path / "out"), "seed": 3,
                    "backbones": {BACKBONE: {"task": "t2v", "num_blocks": LAYERS, "resolution": SIDE, "width": SIDE,
                                             "num_frames": FRAMES}}, "rows": rows})


def run(row, calls=None, pipes=None):
    def factory(r, d):
        pipe = tiny_wan_text_pipeline(PROMPTS, LAYERS)
        if calls is not None:
            inner = pipe.__call__
            pipe.__class__ = type("CountingWan", (type(pipe),), {})
            pipe.__class__.__call__ = lambda self, **kw: (calls.append(len(kw["prompt"])), inner(**kw))[1]
        if pipes is not None:
            pipes.append(pipe)
        return pipe
    path = generate_row(row, device="cpu", warmup=0, progress=False, pipeline_factory=factory)
    merge_shards(row, 1)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The reference row and the test row, generated once: (config, {row name: records})."""
    cfg = config(tmp_path_factory.mktemp("video"))
    pipes: list = []
    for name in ("ref", "fast"):
        run(get_row(cfg, name), pipes=pipes)
    recs = {n: read_jsonl(Path(get_row(cfg, n)["generation_dir"]) / "generation.jsonl") for n in ("ref", "fast")}
    return cfg, recs, pipes


def test_one_record_per_clip_with_its_frames_seed_and_cost(generated):
    from diffusers import UniPCMultistepScheduler

    from ilf.flops import expected_flops, model_flops
    from ilf.harness.clip_records import clip_frames, read_manifest

    cfg, recs, pipes = generated
    assert all(isinstance(p.scheduler, UniPCMultistepScheduler) for p in pipes)  # Wan keeps its own sampler
    for name, steps in (("ref", 3), ("fast", 2)):
        row = get_row(cfg, name)
        row_dir = Path(row["generation_dir"])
        assert [r["index"] for r in recs[name]] == [0, 1]
        assert row["block_forwards_analytic"] == 2 * LAYERS * steps  # guidance: a cond and an uncond call per step
        for r in recs[name]:
            assert r["clip_path"] == f"clips/{r['index']:06d}" and "image_path" not in r
            assert r["clip_frames"] == FRAMES and r["prompt"] == PROMPTS[r["index"]]
            manifest = read_manifest(row_dir / r["clip_path"])
            assert manifest["seed"] == r["seed"] and manifest["fps"] == 16
            assert hashlib.sha256((row_dir / r["clip_path"] / "clip.json").read_bytes()).hexdigest() == r["clip_sha256"]
            frames = clip_frames(row_dir / r["clip_path"])
            assert [p.name for p in frames] == [f"{k:04d}.png" for k in range(FRAMES)]
            from PIL import Image

            assert Image.open(frames[0]).size == (SIDE, SIDE)
            assert r["block_forwards_measured"] == r["block_forwards_analytic"] == 2 * LAYERS * steps
            mf = model_flops(pipes[0].transformer, TOKENS, TEXT_TOKENS)
            assert r["flops_per_image"] == expected_flops(None, mf, steps, calls_per_step=2)
            assert r["seconds_per_image"] > 0
    # the two rows start every clip from the same noise: a paired comparison, clip by clip
    assert [r["seed"] for r in recs["ref"]] == [r["seed"] for r in recs["fast"]]
    assert recs["ref"][0]["clip_sha256"] != recs["fast"][0]["clip_sha256"]


def test_without_guidance_one_call_per_step(tmp_path):
    cfg = config(tmp_path, guidance_scale=1.0)
    row = get_row(cfg, "fast")
    assert row["block_forwards_analytic"] == LAYERS * 2
    run(row)
    rec = read_jsonl(Path(row["generation_dir"]) / "generation.jsonl")[0]
    assert rec["block_forwards_measured"] == rec["block_forwards_analytic"] == LAYERS * 2


def _frame_shas(row_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(row_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((row_dir / "clips").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["truncated", "other_frame", "missing_frame", "missing_clip"])
def test_resume_makes_a_damaged_clip_again_identically(generated, tmp_path, how):
    """A clip one of whose frames is cut short, replaced by another frame or gone (or the whole clip gone) is made
    again on resume, every file byte-identical to the uninterrupted run; the intact clip is not touched."""
    import shutil

    cfg, _, _ = generated
    row = get_row(cfg, "fast")
    whole = Path(row["generation_dir"])
    row_dir = tmp_path / "row"
    shutil.copytree(whole, row_dir)
    row = {**row, "generation_dir": str(row_dir)}
    expected = _frame_shas(row_dir)
    clip = row_dir / "clips" / "000001"
    if how == "truncated":
        (clip / "0002.png").write_bytes((clip / "0002.png").read_bytes()[:40])
    elif how == "other_frame":
        (clip / "0002.png").write_bytes((clip / "0003.png").read_bytes())
    elif how == "missing_frame":
        (clip / "0002.png").unlink()
    else:
        shutil.rmtree(clip)
    intact = {p.name: p.stat().st_mtime_ns for p in (row_dir / "clips" / "000000").iterdir()}
    calls: list[int] = []
    run(row, calls=calls)
    assert calls == [1]  # only the batch holding clip 1
    assert _frame_shas(row_dir) == expected
    assert {p.name: p.stat().st_mtime_ns for p in (row_dir / "clips" / "000000").iterdir()} == intact
    calls.clear()
    run(row, calls=calls)
    assert calls == []


def test_metrics_per_clip_against_the_reference_row(generated):
    import lpips

    from ilf.metrics import MetricOptions, compute_row_metrics
    from ilf.metrics.fidelity import clip_fidelity, fidelity
    from ilf.metrics.tiny import tiny_open_clip

    cfg, recs, _ = generated
    ref_dir, row_dir = (Path(get_row(cfg, n)["generation_dir"]) for n in ("ref", "fast"))
    model, pre, tok = tiny_open_clip()
    torch.manual_seed(0)
    with warnings.catch_warnings():  # lpips builds torchvision's alexnet with the deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        lp = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()  # random AlexNet
    opts = MetricOptions(device="cpu", batch_size=4, inject={"clip_score": dict(model=model, preprocess=pre,
                                                                               tokenizer=tok),
                                                            "fidelity": dict(lpips_model=lp)})
    names = ["psnr_ref", "ssim_ref", "lpips_ref", "clip_score"]
    out = compute_row_metrics(row_dir, names, opts, reference_dir=ref_dir)
    lines = read_jsonl(row_dir / "metrics.jsonl")
    assert [(m["index"], m["clip_path"]) for m in lines] == [(r["index"], r["clip_path"]) for r in recs["fast"]]
    clips = [row_dir / r["clip_path"] for r in recs["fast"]]
    refs = [ref_dir / r["clip_path"] for r in recs["ref"]]
    want = clip_fidelity(clips, refs, names[:3], lpips_model=lp)
    for name in names:
        values = np.array([m[name] for m in lines], dtype=float)
        assert np.isfinite(values).all() and out["metrics"][name]["n"] == 2
        assert out["metrics"][name]["value"] == pytest.approx(values.mean(), rel=1e-12)
        if name != "clip_score":
            np.testing.assert_allclose(values, want[name], rtol=1e-12)
            assert out["metrics"][name]["reference"] == "ref"
    # a clip's value is the mean of its frames' values (frame k against the reference clip's frame k)
    from ilf.harness.clip_records import clip_frames

    per_frame = fidelity(clip_frames(clips[0]), clip_frames(refs[0]), ["psnr_ref"])["psnr_ref"]
    assert lines[0]["psnr_ref"] == pytest.approx(per_frame.mean(), rel=1e-12) and len(per_frame) == FRAMES
    # CLIP score: per frame against the clip's prompt, averaged over the clip
    from ilf.metrics.clip_score import clip_scores, load_clip_model

    frames = clip_frames(clips[1])
    scores = clip_scores(load_clip_model(model=model, preprocess=pre, tokenizer=tok, device="cpu"), frames,
                         [recs["fast"][1]["prompt"]] * FRAMES)
    assert lines[1]["clip_score"] == pytest.approx(scores.mean(), rel=1e-6)
    # the reference row itself gets no value for the *_ref metrics
    own = compute_row_metrics(ref_dir, names[:2], opts, reference_dir=ref_dir)
    assert own["metrics"]["psnr_ref"]["value"] is None


def test_metrics_refuse_a_damaged_clip_and_image_metrics_on_clips(generated, tmp_path):
    import shutil

    from ilf.harness.image_records import DamagedImageError
    from ilf.metrics import compute_row_metrics

    cfg, _, _ = generated
    row_dir = tmp_path / "row"
    shutil.copytree(get_row(cfg, "fast")["generation_dir"], row_dir)
    with pytest.raises(ValueError, match="image_reward scores images.*clips"):
        compute_row_metrics(row_dir, ["image_reward"])
    (row_dir / "clips" / "000000" / "0001.png").write_bytes(b"")
    with pytest.raises(DamagedImageError, match=r"clips/000000 frame 0001.png does not match"):
        compute_row_metrics(row_dir, ["psnr_ref"], reference_dir=row_dir)


def test_video_rows_are_checked_when_the_config_is_read(tmp_path):
    from ilf.errors import ILFConfigError

    with pytest.raises(ILFConfigError, match=r"rows\[fast\]\.metrics='image_reward'"):
        config(tmp_path, metrics=["image_reward"])
    cfg = {"name": "t", "world": "paper", "out_dir": str(tmp_path), "seed": 0,
           "backbones": {BACKBONE: {"task": "t2v", "num_blocks": 2, "resolution": 32}},
           "rows": [{"name": "a", "table": "video", "backbone": BACKBONE, "steps": 2, "method": "baseline",
                     "prompts": "vbench-overall-consistency"}]}
    with pytest.raises(ILFConfigError, match=r"backbones\.wan21-t2v-1\.3b\.num_frames"):
        resolve(cfg)
    cfg["backbones"][BACKBONE]["num_frames"] = 5
    cfg["rows"][0]["prompts"] = "drawbench"
    with pytest.raises(ILFConfigError, match="a t2v prompt set"):
        resolve(cfg)
    # image rows keep their keys: no frame count or width, so their generation signature is unchanged
    cfg["backbones"] = {"pixart-alpha-512": {"task": "t2i", "num_blocks": 28, "resolution": 512}}
    cfg["rows"][0].update(backbone="pixart-alpha-512", prompts="drawbench")
    row = resolve(cfg)["rows"][0]
    assert "num_frames" not in row and "width" not in row and row["block_forwards_analytic"] == 56
