"""train_t_post: training at t (the default) or at the inference t_post; and rho = n/m checkpoints still load as saved."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from train_utils import LOOP, NUM_LAYERS, tiny_config, tiny_train_pipeline  # noqa: E402
from tiny import dpm, tiny_dit  # noqa: E402

from ilf import FeedbackConfig, ILFConfigError, apply_feedback, load_feedback  # noqa: E402
from ilf.attach import get_attachment  # noqa: E402
from ilf.errors import CheckpointError  # noqa: E402
from ilf.schedule import post_feedback_timestep  # noqa: E402
from ilf.train import precompute, train  # noqa: E402
from ilf.train.t_post import inference_t_post_table, inference_timesteps, use_train_t_post  # noqa: E402
from tolerances import tiny_pipeline_tol

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture

CFG = FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1], t_post="rescale", ratio="m/n")


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("latents_tpost")
    precompute(tiny_config("c2i", root), root, pipeline=tiny_train_pipeline("c2i"), progress=False)
    return root


def test_config_field_default_and_errors(latents):
    assert tiny_config("c2i", latents).train_t_post == "t"
    with pytest.raises(ILFConfigError, match="train_t_post"):
        tiny_config("c2i", latents, train_t_post="post")
    with pytest.raises(ILFConfigError, match="train_t_post_steps"):
        tiny_config("c2i", latents, train_t_post="inference")
    assert tiny_config("c2i", latents, train_t_post="inference", train_t_post_steps=5).train_t_post_steps == 5


@pytest.mark.parametrize("t_post,ratio", [("rescale", "m/n"), ("rescale", "n/m"), ("uniform", "m/n"), ("anneal", "n/m")])
def test_table_on_the_inference_grid_is_what_sampling_uses(t_post, ratio):
    cfg = FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1], t_post=t_post, ratio=ratio)
    times = inference_timesteps(dpm().config, 5)
    assert len(times) == 5 and times == sorted(times, reverse=True)
    table = inference_t_post_table(cfg, NUM_LAYERS, times)
    for k, t in enumerate(times):
        t_next = times[k + 1] if k + 1 < len(times) else 0.0
        assert table[int(t)] == pytest.approx(post_feedback_timestep(cfg, NUM_LAYERS, t, t_next, k), abs=1e-4)
    between = int((times[1] + times[2]) / 2) + 1  # nearer times[1]: its spacing, shifted to this t
    spacing = times[1] - times[2]
    assert table[between] == pytest.approx(post_feedback_timestep(cfg, NUM_LAYERS, between, between - spacing, 1), abs=1e-4)
    ident = inference_t_post_table(FeedbackConfig(loop_start=1, loop_end=3, t_post="default"), NUM_LAYERS, times)
    assert torch.equal(ident, torch.arange(1000, dtype=torch.float32))


def test_training_call_equals_the_sampling_call_at_that_step():
    """A direct (training) call at t = t_k gives what the sampling run's step k gives: same t_post."""
    torch.manual_seed(0)
    steps, k = 5, 2
    train_model, sample_model = tiny_dit(NUM_LAYERS, seed=1), tiny_dit(NUM_LAYERS, seed=1)
    sched = dpm()
    apply_feedback(train_model, CFG)
    apply_feedback(sample_model, CFG, scheduler=sched)
    with torch.no_grad():
        for m in (train_model, sample_model):
            m.ilf_scales.copy_(torch.linspace(0.1, 0.3, CFG.loop_size))
    sample_model.ilf_feedback.load_state_dict(train_model.ilf_feedback.state_dict())
    x = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([1, 2])
    sched.set_timesteps(steps)
    sched._step_index = k  # the pipeline is at step k of its run
    t_k = sched.timesteps[k]
    t = torch.full((2,), float(t_k))
    with torch.no_grad():
        at_t = train_model(x, timestep=t, class_labels=labels).sample
        use_train_t_post(train_model, "inference", steps, dpm().config)
        trained = train_model(x, timestep=t, class_labels=labels).sample
        sampled = sample_model(x, timestep=t_k.reshape(1).expand(2), class_labels=labels).sample
    tol = tiny_pipeline_tol(2 * NUM_LAYERS, 1)  # one ILF call (loop re-run included), two code paths to t_post
    assert torch.allclose(trained, sampled, rtol=tol, atol=tol)
    assert not torch.allclose(at_t, sampled, atol=100 * tol)  # t_post = t is another condition
    assert get_attachment(train_model).config == CFG


def test_use_train_t_post_t_changes_nothing_and_needs_ilf():
    model = tiny_dit(NUM_LAYERS)
    with pytest.raises(ILFConfigError, match="transformer"):
        use_train_t_post(model, "inference", 5, dpm().config)
    apply_feedback(model, CFG)
    method = get_attachment(model).method
    assert use_train_t_post(model, "t", None, dpm().config) is None and get_attachment(model).method is method
    with pytest.raises(ILFConfigError, match="train_t_post"):
        use_train_t_post(model, "teacher", 5, dpm().config)


def _first_loss(run: Path) -> float:
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in recs if r.get("iteration") == 1 and "loss" in r)


def test_training_in_the_inference_regime(latents, tmp_path):
    base = dict(feedback=CFG, iterations=2, checkpoint_interval=1)
    cfg_t = tiny_config("c2i", latents, **base)
    cfg_inf = tiny_config("c2i", latents, **base, train_t_post="inference", train_t_post_steps=5)
    train(cfg_t, tmp_path / "t", pipeline=tiny_train_pipeline("c2i"), progress=False)
    final = train(cfg_inf, tmp_path / "inf", pipeline=tiny_train_pipeline("c2i"), progress=False)
    # at s = 0 training at t is the plain backbone; at the inference t_post the blocks after F see another time
    assert _first_loss(tmp_path / "t") != pytest.approx(_first_loss(tmp_path / "inf"), rel=1e-6)
    stored = json.loads((tmp_path / "inf" / "train_config.json").read_text())
    assert stored["train_t_post"] == "inference" and stored["train_t_post_steps"] == 5
    assert load_feedback(tiny_dit(NUM_LAYERS), final) is not None
    with pytest.raises(CheckpointError, match="train_t_post"):  # resuming as another regime is another run
        train(cfg_t, tmp_path / "inf", resume=True, pipeline=tiny_train_pipeline("c2i"), progress=False)


def test_default_ratio_is_m_over_n_and_n_over_m_checkpoints_load_as_saved(latents, tmp_path):
    assert FeedbackConfig().ratio == "m/n"
    printed = FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1], t_post="rescale", ratio="n/m")
    final = train(tiny_config("c2i", latents, feedback=printed, iterations=1, checkpoint_interval=1), tmp_path / "nm",
                  pipeline=tiny_train_pipeline("c2i"), progress=False)
    assert json.loads((final / "ilf_feedback.json").read_text())["feedback_config"]["ratio"] == "n/m"
    model = load_feedback(tiny_dit(NUM_LAYERS), final)
    cfg = get_attachment(model).config
    assert cfg.ratio == "n/m" and cfg == printed
    # t_post as saved: 2.5 spacings beyond t for a 3-block loop of 5 (rho = 5/3), not 0.6 (m/n)
    assert post_feedback_timestep(cfg, NUM_LAYERS, 600.0, 500.0, 1) == pytest.approx(600 - 100 * 5 / 3)
    overridden = get_attachment(load_feedback(tiny_dit(NUM_LAYERS), final, {"ratio": "m/n"})).config
    assert overridden.ratio == "m/n"
