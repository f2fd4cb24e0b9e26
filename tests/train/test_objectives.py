"""Objectives of ILF training: the batched DPM-Solver++ teacher, the DDIM-equivalent noise, teacher cost."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from train_utils import LOOP, NUM_LAYERS, tiny_train_pipeline  # noqa: E402

from ilf import FeedbackConfig, apply_feedback, count_block_forwards  # noqa: E402
from ilf.train.objectives import Objective, ddim_equivalent_noise, dpm_solver_pp_teacher, noise_prediction  # noqa: E402
from tolerances import reduction_tol, tiny_pipeline_tol

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture

BETAS = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000)


def _ac() -> torch.Tensor:
    return DDPMScheduler(**BETAS).alphas_cumprod


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in for a noise predictor, depending on x and t."""
    w = (t.float() / 1000.0).view(-1, 1, 1, 1).to(x.device)
    return torch.tanh(0.7 * x + w) * (1 + w)


def test_batched_dpm_solver_matches_diffusers():
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    t, s, k = torch.tensor([900, 900]), torch.tensor([450, 450]), 8
    ours, eps0 = dpm_solver_pp_teacher(_model, x_t, t, s, k, _ac())
    grid = torch.round(900 + (450 - 900) * torch.arange(k + 1, dtype=torch.float64) / k).long().tolist()
    sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        lower_order_final=True)
    sched.set_timesteps(timesteps=grid)
    x = x_t.clone()
    for i in range(k):  # K steps land on grid[K] = s (the step to the final sigma is never taken)
        x = sched.step(_model(x, torch.tensor([grid[i]] * 2)), grid[i], x).prev_sample
    # 8 solver steps of elementwise float32 updates (no reductions): a few roundings per step; diffusers computes
    # its coefficients in float64 and casts, ours in float32, which adds eps per coefficient and step
    tol = reduction_tol([1] * 8 * 8)
    torch.testing.assert_close(ours, x, rtol=tol, atol=tol)
    torch.testing.assert_close(eps0, _model(x_t, t))


@pytest.mark.parametrize("t_val", [0, 1, 5, 317, 999])
def test_ddim_equivalent_noise_is_exact_for_a_constant_noise_model(t_val):
    """A model predicting the same eps everywhere has an exact DDIM path; K solver steps must recover eps."""
    g = torch.Generator().manual_seed(t_val)
    eps = torch.randn(1, 4, 8, 8, generator=g)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    ac = _ac()
    t = torch.tensor([t_val])
    s = t // 2
    x_t = ac[t].sqrt() * x0 + (1 - ac[t]).sqrt() * eps
    x_s, eps0 = dpm_solver_pp_teacher(lambda x, tt: eps.expand_as(x), x_t, t, s, 8, ac)
    target = ddim_equivalent_noise(x_t, x_s, t, s, ac, eps0)
    # exact in exact arithmetic; in float32 the recovery divides by sqrt(1 - alpha_bar_t), which is ~0.01 at t=0,
    # amplifying the 8 steps' float32 roundings of O(1) latents by up to ~100x: 100 * reduction_tol(8 steps)
    tol = 100 * reduction_tol([1] * 8 * 8)
    torch.testing.assert_close(target, eps, rtol=tol, atol=tol)


def _batch(task: str, b: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {"latents": torch.randn(b, 4, 8, 8, generator=g), "noise": torch.randn(b, 4, 8, 8, generator=g),
             "timestep": torch.tensor([999, 500, 3])[:b]}
    if task == "t2i":
        batch["prompt_embeds"] = torch.randn(b, 5, 64, generator=g)
        batch["prompt_attention_mask"] = torch.ones(b, 5, dtype=torch.long)
    else:
        batch["class_labels"] = torch.tensor([1, 2, 1000])[:b]
    return batch


@pytest.mark.parametrize("task", ["t2i", "c2i"])
def test_block_forwards_per_objective(task):
    """fast = student + exactly ONE teacher forward; standard = student + K teacher forwards; none = student."""
    pipe = tiny_train_pipeline(task)
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    n, m, k = NUM_LAYERS, LOOP[1] - LOOP[0] + 1, 3
    student = n + m + 1
    expected = {"none": student, "fast": student + n, "standard": student + k * n}
    for mode, want in expected.items():
        obj = Objective(mode, tr, pipe.scheduler.alphas_cumprod, teacher_steps=k)
        with count_block_forwards(tr) as counter:
            loss, terms = obj(_batch(task))
        assert counter.count == want, (mode, counter.count, want)
        assert loss.shape == (3,) and torch.isfinite(loss).all()
        assert ("loss_distill" in terms) == (mode != "none")


def test_losses_use_noise_channels_only():
    """Learned-variance backbones output 2C channels; the losses read the first C (the noise)."""
    pipe = tiny_train_pipeline("c2i")
    assert pipe.transformer.config.out_channels == 2 * pipe.transformer.config.in_channels
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    b = _batch("c2i")
    obj = Objective("none", tr, pipe.scheduler.alphas_cumprod)
    x_t = obj.noised(b["latents"], b["noise"], b["timestep"])
    full = tr(x_t, timestep=b["timestep"], class_labels=b["class_labels"], return_dict=False)[0]
    assert full.shape[1] == 8
    loss, _ = obj(b)
    want = ((full[:, :4] - b["noise"]) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss.detach(), want.detach())


def test_loss_decreases_on_a_toy_batch():
    torch.manual_seed(0)
    pipe = tiny_train_pipeline("t2i")
    tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
    params = list(tr.ilf_feedback.parameters()) + [tr.ilf_scales]
    opt = torch.optim.Adam(params, lr=1e-2)
    obj = Objective("fast", tr, pipe.scheduler.alphas_cumprod)
    batch = _batch("t2i")
    first = float(obj(batch)[0].detach().mean())
    for _ in range(25):
        opt.zero_grad()
        obj(batch)[0].mean().backward()
        opt.step()
    last = float(obj(batch)[0].detach().mean())
    assert last < 0.9 * first, (first, last)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        pipe = tiny_train_pipeline("t2i")
        tr = apply_feedback(pipe.transformer, FeedbackConfig(loop_start=LOOP[0], loop_end=LOOP[1]))
        if ckpt:
            tr.enable_gradient_checkpointing()
        with torch.no_grad():
            tr.ilf_scales.fill_(0.1)
        Objective("fast", tr, pipe.scheduler.alphas_cumprod)(_batch("t2i"))[0].mean().backward()
        grads.append([p.grad.clone() for p in list(tr.ilf_feedback.parameters()) + [tr.ilf_scales]])
    for a, b in zip(*grads):
        # the recomputed forward repeats the same ops; forward + backward of the 5-block model bounds the rest
        tol = tiny_pipeline_tol(3 * 5, 1)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(a.abs().max()))
