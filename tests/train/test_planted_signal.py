"""A planted signal: the trainer finds a feedback that exists by construction, and nothing without the scales.

The shipped toy DiT (a trained denoiser, 14 blocks, loop 4..9) is damaged on the student's path only: block
b's input is halved whenever the feedback forward runs, while the teacher (`ilf.bypass`, the plain backbone)
stays undamaged. The undamaged backbone is then a near optimum of both loss terms (it denoises, and it is
the teacher), and feedback added at the loop's input can undo the halving, so a useful feedback exists.
The real `ilf.train.train` runs; its diagnostics (train_diagnostics.jsonl) are read back. Fidelity is
`output_change` = mse(student, undamaged backbone) on the same probe inputs.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from ilf.attach import get_attachment
from ilf.config import FeedbackConfig
from ilf.train import precompute, train
from ilf.train.backbone import load_backbone
from ilf.train.config import DataConfig, OptimConfig, TrainConfig
from ilf.train.diagnostics import DIAGNOSTICS_NAME

LOOP = (4, 9)  # the toy configs' loop
DAMAGE = 0.5  # block b's input on the student's path is multiplied by this


def _config(latents: Path, iterations: int) -> TrainConfig:
    data = DataConfig(source="toy-digits", latents_dir=str(latents), num_samples=32, shard_size=32, batch_size=32)
    return TrainConfig(name="planted", backbone="toy-c2i", feedback=FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]),
                       distill="fast", data=data, optim=OptimConfig(lr=2e-2), global_batch_size=8, micro_batch_size=8,
                       iterations=iterations, checkpoint_interval=1000, log_interval=10, cond_dropout=0.0,
                       device="cpu").validate()


def _damaged_pipeline():
    """The toy c2i pipeline whose block b sees DAMAGE x its input on the student's path (not in `bypass`)."""
    pipe = load_backbone("toy-c2i")
    tr = pipe.transformer

    def damage(module, args):
        state = get_attachment(tr)
        if state is not None and state.bypass_depth == 0:
            return (args[0] * DAMAGE,) + args[1:]
        return None

    tr.transformer_blocks[LOOP[0]].register_forward_pre_hook(damage)
    return pipe


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted") / "latents"
    precompute(_config(root, 1), root, pipeline=load_backbone("toy-c2i"), progress=False)
    return root


def _diagnostics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / DIAGNOSTICS_NAME).read_text().splitlines()]


def test_trainer_repairs_a_damaged_loop(latents, tmp_path, one_thread):
    train(_config(latents, 60), tmp_path / "run", pipeline=_damaged_pipeline(), progress=False)
    recs = _diagnostics(tmp_path / "run")
    first, last = recs[0], recs[-1]
    assert first["iteration"] == 0 and last["iteration"] == 60
    assert first["scales"] == [0.0] * 6 and first["feedback_ratio"] == [0.0] * 6
    # The damage is real: the damaged student is far from the undamaged backbone before training.
    assert first["output_change"] > 0.1
    # Effect sizes, not tolerances: Adam moves each scale by at most ~lr = 0.02 per step (<= 1.2 in 60 steps);
    # a feedback that repairs a halved input must be a sizeable fraction of that input, so the scales must leave
    # 0 by far more than float noise and the feedback must reach >= 10% of the loop state's norm.
    assert max(abs(s) for s in last["scales"]) > 0.02, last["scales"]
    assert max(last["feedback_ratio"]) > 0.1, last["feedback_ratio"]
    # The probe loss falls and the student moves toward the undamaged backbone (fidelity): by at least 2x each.
    assert last["loss"] < 0.5 * first["loss"], (first["loss"], last["loss"])
    assert last["loss_distill"] < 0.5 * first["loss_distill"]
    assert last["output_change"] < 0.5 * first["output_change"], (first["output_change"], last["output_change"])


def test_without_the_scales_nothing_is_repaired(latents, tmp_path, one_thread, monkeypatch):
    """Negative control: scales frozen at 0 (left out of the optimizer) disable the feedback; F alone gets zero
    gradient through s = 0, so neither the loss nor the fidelity can improve."""
    loop = importlib.import_module("ilf.train.loop")
    all_params = loop.feedback_parameters
    monkeypatch.setattr(loop, "feedback_parameters", lambda tr: all_params(tr)[:-1])  # the scales are last
    train(_config(latents, 10), tmp_path / "run", pipeline=_damaged_pipeline(), progress=False)
    recs = _diagnostics(tmp_path / "run")
    first, last = recs[0], recs[-1]
    assert last["scales"] == [0.0] * 6
    # nothing trainable reaches the output: the same probe forward, bit for bit
    assert last["loss"] == first["loss"] and last["output_change"] == first["output_change"]
    assert torch.tensor(last["loss"]).isfinite()
