"""The training loop: exact resume, frozen backbone, final checkpoint, logs, and errors before any step."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from disk import disk_events, flushed, renamed_onto  # noqa: E402,F401 (fixture)
from train_utils import LOOP, tiny_config, tiny_train_pipeline  # noqa: E402

from ilf import CheckpointError, ILFConfigError, load_feedback  # noqa: E402
from ilf.train import precompute, train  # noqa: E402
from ilf.train.data import LatentShards  # noqa: E402
from ilf.train.state import list_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("latents")
    out = {}
    for task in ("t2i", "c2i"):
        cfg = tiny_config(task, root / task)
        precompute(cfg, root / task, pipeline=tiny_train_pipeline(task), progress=False)
        out[task] = root / task
    return out


def _all_tensors(run: Path, iteration: int) -> dict[str, torch.Tensor]:
    d = run / "checkpoints" / f"iter_{iteration:06d}"
    return {**{f"w.{k}": v for k, v in load_file(str(d / "ilf_feedback.safetensors")).items()},
            **{f"o.{k}": v for k, v in load_file(str(d / "optimizer.safetensors")).items()}}


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("task", ["t2i", "c2i"])
def test_kill_and_resume_is_bit_identical(latents, tmp_path, task):
    cfg = tiny_config(task, latents[task], iterations=4, checkpoint_interval=2)
    straight = train(cfg, tmp_path / "straight", pipeline=tiny_train_pipeline(task), progress=False)

    def kill(it: int) -> None:
        if it == 3:  # after the checkpoint at 2, one more optimizer step is lost
            raise Killed()
    with pytest.raises(Killed):
        train(cfg, tmp_path / "killed", pipeline=tiny_train_pipeline(task), progress=False, on_step=kill)
    (tmp_path / "killed" / "checkpoints" / ".iter_000004.tmp").mkdir()  # a half-written checkpoint from the kill
    assert [it for it, _ in list_checkpoints(tmp_path / "killed")] == [2]
    with pytest.raises(ValueError, match="--resume"):  # an existing run is never silently overwritten
        train(cfg, tmp_path / "killed", pipeline=tiny_train_pipeline(task), progress=False)
    resumed = train(cfg, tmp_path / "killed", resume=True, pipeline=tiny_train_pipeline(task), progress=False)
    a, b = _all_tensors(tmp_path / "straight", 4), _all_tensors(tmp_path / "killed", 4)
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fa, fb = load_file(str(straight / "ilf_feedback.safetensors")), load_file(str(resumed / "ilf_feedback.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    log = [json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    steps = [r["iteration"] for r in log if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the killed run's step 3 record was dropped on resume
    assert [r["event"] for r in log if "event" in r] == ["start", "resume"]


def test_only_feedback_changes_and_final_loads_into_stock_pipeline(latents, tmp_path):
    pipe = tiny_train_pipeline("t2i")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    block_e = {k: v.clone() for k, v in pipe.transformer.transformer_blocks[LOOP[1]].state_dict().items()}
    cfg = tiny_config("t2i", latents["t2i"], iterations=3, checkpoint_interval=10)
    final = train(cfg, tmp_path / "run", pipeline=pipe, progress=False)
    tr = pipe.transformer
    for k, v in before.items():
        assert torch.equal(tr.state_dict()[k], v), f"backbone tensor {k} changed"
    fb = tr.ilf_feedback.state_dict()
    assert any(not torch.equal(fb[k], block_e[k]) for k in block_e), "the feedback block did not train"
    assert (tr.ilf_scales.detach().abs() > 0).all()
    assert [it for it, _ in list_checkpoints(tmp_path / "run")] == [3]  # the last iteration is always saved
    # the final folder loads into a fresh stock pipeline and generates
    fresh = tiny_train_pipeline("t2i")
    load_feedback(fresh, final)
    torch.testing.assert_close(fresh.transformer.ilf_scales, tr.ilf_scales, rtol=0, atol=0)
    img = fresh(prompt="one small red circle on the left", num_inference_steps=2, height=8, width=8, output_type="latent",
                use_resolution_binning=False, max_sequence_length=12, generator=torch.Generator().manual_seed(0)).images
    assert torch.isfinite(img).all()
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rec = [r for r in log if "loss" in r][-1]
    for key in ("loss", "loss_recon", "loss_distill", "lr", "scales", "samples_per_s", "iteration", "epoch"):
        assert key in rec
    assert len(rec["scales"]) == LOOP[1] - LOOP[0] + 1


def test_checkpoint_and_final_folders_reach_the_disk_before_they_count(latents, tmp_path, disk_events):
    """Each checkpoint and `final/`: every file flushed, the folder renamed into place, then its parent flushed
    (a crash leaves the whole folder under its name or none)."""
    cfg = tiny_config("c2i", latents["c2i"], iterations=2, checkpoint_interval=2)
    train(cfg, tmp_path / "run", pipeline=tiny_train_pipeline("c2i"), progress=False)
    run = (tmp_path / "run").resolve()
    for folder in (run / "checkpoints" / "iter_000002", run / "final"):
        k, tmp = renamed_onto(disk_events, folder)
        assert all(flushed(disk_events, f"{tmp}/{p.name}", k) for p in folder.iterdir()), folder
        assert ("fsync", str(folder.parent)) in disk_events[k + 1:], folder


def test_keep_list_and_pruning(latents, tmp_path):
    cfg = tiny_config("c2i", latents["c2i"], iterations=6, checkpoint_interval=2, keep_iterations=[3], keep_last=1)
    train(cfg, tmp_path / "run", pipeline=tiny_train_pipeline("c2i"), progress=False)
    assert [it for it, _ in list_checkpoints(tmp_path / "run")] == [3, 6]


def _never(it: int) -> None:
    raise AssertionError("a training step ran before the error")


def test_errors_before_any_step(latents, tmp_path):
    pipe = tiny_train_pipeline("t2i")
    # missing data folder
    with pytest.raises(FileNotFoundError, match="ilf precompute"):
        train(tiny_config("t2i", tmp_path / "nope"), tmp_path / "r1", pipeline=pipe, progress=False, on_step=_never)
    # latents that do not fit the backbone: c2i latents for a t2i backbone; a backbone of another sample size
    with pytest.raises(ILFConfigError, match="task 'c2i'"):
        train(tiny_config("t2i", latents["c2i"]), tmp_path / "r2", pipeline=pipe, progress=False, on_step=_never)
    from tiny import dpm, tiny_pixart, tiny_vae
    from diffusers import PixArtAlphaPipeline
    big = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(), scheduler=dpm(),
                              transformer=tiny_pixart(5, sample_size=16, caption_channels=64))
    with pytest.raises(ILFConfigError, match="sample_size is 16x16"):
        train(tiny_config("t2i", latents["t2i"]), tmp_path / "r3", pipeline=big, progress=False, on_step=_never)
    # empty dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "captions.jsonl").write_text("")
    cfg = tiny_config("t2i", tmp_path / "lat_empty")
    cfg.data.source, cfg.data.path = "captions", str(empty)
    with pytest.raises(ValueError, match="empty"):
        precompute(cfg, tmp_path / "lat_empty", pipeline=pipe, progress=False)
    # a corrupted shard
    bad = tmp_path / "bad_latents"
    shutil.copytree(latents["t2i"], bad)
    (bad / "shard_00001.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupted"):
        LatentShards(bad)
    assert not (tmp_path / "r1" / "train_log.jsonl").exists()


def test_corrupted_or_mismatched_checkpoint_errors_before_any_step(latents, tmp_path):
    cfg = tiny_config("c2i", latents["c2i"], iterations=2, checkpoint_interval=1, keep_last=2)
    train(cfg, tmp_path / "run", pipeline=tiny_train_pipeline("c2i"), progress=False)
    longer = tiny_config("c2i", latents["c2i"], iterations=4, checkpoint_interval=1)
    changed = tiny_config("c2i", latents["c2i"], iterations=4, optim=type(cfg.optim)(lr=5e-3))
    with pytest.raises(CheckpointError, match="optim.lr"):
        train(changed, tmp_path / "run", resume=True, pipeline=tiny_train_pipeline("c2i"), progress=False,
              on_step=_never)
    opt = tmp_path / "run" / "checkpoints" / "iter_000002" / "optimizer.safetensors"
    data = bytearray(opt.read_bytes())
    data[-5] ^= 0xFF
    opt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        train(longer, tmp_path / "run", resume=True, pipeline=tiny_train_pipeline("c2i"), progress=False,
              on_step=_never)
    # a checkpoint of another backbone depth
    with pytest.raises(CheckpointError):
        from tiny import dpm, tiny_dit, tiny_vae
        from diffusers import DiTPipeline
        deeper = DiTPipeline(transformer=tiny_dit(6), vae=tiny_vae(), scheduler=dpm())
        train(longer, tmp_path / "run", resume_from=tmp_path / "run" / "checkpoints" / "iter_000001",
              pipeline=deeper, progress=False, on_step=_never)


def _poison_scales(tr: torch.nn.Module) -> None:
    with torch.no_grad():
        tr.ilf_scales.fill_(float("nan"))  # every loop block's h + s f is NaN: the loss is NaN


def _poison_gradient(tr: torch.nn.Module) -> None:
    tr.ilf_scales.register_hook(lambda g: torch.full_like(g, float("inf")))  # the loss stays finite


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("poison,what", [(_poison_scales, "loss"), (_poison_gradient, "gradient norm")])
def test_nonfinite_loss_or_gradient_stops_before_the_step(latents, tmp_path, mixed_precision, poison, what):
    from ilf import NonFiniteLossError

    pipe = tiny_train_pipeline("c2i")
    cfg = tiny_config("c2i", latents["c2i"], iterations=5, checkpoint_interval=2, mixed_precision=mixed_precision)

    def at_two(it: int) -> None:
        if it == 2:  # after the checkpoint at 2: iteration 3 meets the non-finite value
            poison(pipe.transformer)
    with pytest.raises(NonFiniteLossError, match=f"stopped at iteration 3: the {what} is") as err:
        train(cfg, tmp_path / "run", pipeline=pipe, progress=False, on_step=at_two)
    assert (err.value.iteration, err.value.what, err.value.last_checkpoint) == (3, what, 2)
    assert "\n" not in str(err.value) and "last checkpoint is iteration 2" in str(err.value)
    assert [it for it, _ in list_checkpoints(tmp_path / "run")] == [2] and not (tmp_path / "run" / "final").exists()
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "iter_000002" / "ilf_feedback.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2]  # iteration 3 was never taken or logged
    assert log[-1]["event"] == "stopped" and log[-1]["iteration"] == 3
    if what == "gradient norm":
        assert torch.isfinite(pipe.transformer.ilf_scales).all()  # the optimizer never applied the gradient
