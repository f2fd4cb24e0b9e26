"""The flow-matching objective's pieces: training sigmas, the Euler teacher, the Euler-equivalent velocity, sampling."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from ilf import CheckpointError, ILFConfigError
from ilf.train.config import DataConfig, TrainConfig
from ilf.train.state import check_resumable
from ilf.train.flow import euler_equivalent_velocity, euler_teacher, noised, timestep_sampler, training_sigmas
from tolerances import reduction_tol

pytestmark = pytest.mark.numerics  # compares floats across code paths

T = 1000
DEV = dict(num_train_timesteps=T, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
           base_image_seq_len=256, max_image_seq_len=4096)  # FLUX.1-dev's scheduler config
SD35 = dict(num_train_timesteps=T, shift=3.0)  # SD3.5's scheduler config
SCHNELL = dict(num_train_timesteps=T, shift=1.0, use_dynamic_shifting=False)


def _config(d: dict) -> dict:
    return dict(FlowMatchEulerDiscreteScheduler(**d).config)


@pytest.mark.parametrize("cfg,seq", [(SCHNELL, None), (SD35, None), (DEV, 256), (DEV, 4096), (DEV, 1024)])
def test_training_sigmas_are_the_pipelines_shifted_sigmas(cfg, seq):
    """The T training sigmas equal what the scheduler itself makes of the T-point grid 1 .. 1/T at the pipeline's
    shift (set_timesteps with FluxPipeline's mu for dynamic shifting), ascending."""
    ours = training_sigmas(_config(cfg), seq)
    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    mu = calculate_shift(seq, 256, 4096, 0.5, 1.15) if cfg.get("use_dynamic_shifting") else None
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / T, T), mu=mu)
    want = sched.sigmas[:-1].flip(0).double()  # drop the appended terminal 0
    assert ours.shape == (T,) and ours.dtype == torch.float64
    assert bool((ours[1:] > ours[:-1]).all()) and 0 < float(ours[0]) and float(ours[-1]) == pytest.approx(1.0)
    torch.testing.assert_close(ours, want, rtol=4 * reduction_tol([1]), atol=0)  # diffusers' float32 path
    if cfg is SCHNELL:
        torch.testing.assert_close(ours, torch.arange(1, T + 1, dtype=torch.float64) / T, rtol=1e-6, atol=0)


def test_dynamic_shift_depends_on_the_resolution():
    low, high = training_sigmas(_config(DEV), 256), training_sigmas(_config(DEV), 4096)
    assert bool((high[:-1] > low[:-1]).all())  # more tokens: a larger shift, noisier at every index
    with pytest.raises(ValueError, match="sequence length"):
        training_sigmas(_config(DEV), None)


def _velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in for a velocity predictor, depending on x and s."""
    w = s.view(-1, 1, 1, 1).to(x.device).float()
    return torch.tanh(0.7 * x + w) * (1 + w)


def test_euler_teacher_matches_diffusers_flow_match_euler_steps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    s, k = 0.8, 5
    ours, v0 = euler_teacher(_velocity, x, torch.tensor([s], dtype=torch.float64), k)
    grid = [s - s / 2 * i / k for i in range(k + 1)]
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    sched.set_timesteps(sigmas=grid)
    ref = x.clone()
    for i in range(k):  # K steps land on grid[K] = s/2 (the step to the appended 0 is never taken)
        ref = sched.step(_velocity(ref, torch.tensor([float(sched.sigmas[i])])), sched.timesteps[i], ref).prev_sample
    # K elementwise float32 updates: a few roundings per step; diffusers keeps its sigmas in float32
    tol = 4 * reduction_tol([1] * k)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(v0, _velocity(x, torch.tensor([s])))


@pytest.mark.parametrize("s_val", [1 / T, 0.013, 0.5, 1.0])
def test_euler_equivalent_velocity_is_exact_on_a_straight_path(s_val):
    """Noise and data fixed, the velocity eps - x0 is constant along the path: K Euler steps are exact and the
    equivalent one-step velocity is eps - x0 again."""
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    s = torch.full((2,), s_val, dtype=torch.float64)
    x_s = noised(x0, eps, s)
    x_half, v0 = euler_teacher(lambda x, sk: (eps - x0).float(), x_s, s, 8)
    torch.testing.assert_close(x_half, noised(x0, eps, s / 2), rtol=0, atol=8 * reduction_tol([1] * 8))
    v = euler_equivalent_velocity(x_s, x_half, s, v0)
    # x_s - x_half is O(s) and carries float32 rounding of O(1) latents: dividing by s/2 scales it by 2/s
    tol = (2 / s_val) * 8 * reduction_tol([1] * 8)
    torch.testing.assert_close(v, eps - x0, rtol=0, atol=tol)


def test_one_euler_step_gives_the_teachers_velocity():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 8, 8, generator=g)
    s = torch.tensor([0.9, 0.4, 0.0], dtype=torch.float64)
    x_half, v0 = euler_teacher(_velocity, x, s, 1)
    v = euler_equivalent_velocity(x, x_half, s, v0)
    torch.testing.assert_close(v[:2], _velocity(x, s)[:2], rtol=4 * reduction_tol([1]), atol=4 * reduction_tol([1]))
    assert torch.equal(v[2], v0[2])  # s = 0: no step, the fallback


def test_noised_endpoints():
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    assert torch.equal(noised(x0, eps, torch.tensor([0.0, 0.0], dtype=torch.float64)), x0)
    assert torch.equal(noised(x0, eps, torch.tensor([1.0, 1.0], dtype=torch.float64)), eps)


def test_logit_normal_sampling():
    """u = sigmoid(m + s n): P(u > 1/2) = Phi(m / s); indices stay in 0..T-1; uniform leaves TrainStream's draw."""
    assert timestep_sampler("uniform", T) is None
    n, m, sd = 4000, 0.5, 1.0
    draw = timestep_sampler("logit-normal", T, m, sd)
    g = torch.Generator().manual_seed(0)
    t = torch.stack([draw(g) for _ in range(n)])
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= T - 1
    p = 0.5 * (1 + math.erf(m / sd / math.sqrt(2)))
    frac = float((t >= T // 2).double().mean())
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n), (frac, p)  # 4 binomial standard errors
    with pytest.raises(ILFConfigError, match="timestep_sampling"):
        timestep_sampler("cosine", T)
    again = pickle.loads(pickle.dumps(draw))  # DataLoader workers receive the stream pickled
    assert torch.equal(again(torch.Generator().manual_seed(3)), draw(torch.Generator().manual_seed(3)))


def test_checkpoints_without_the_flow_fields_resume_with_their_defaults(tmp_path):
    """A checkpoint written before `objective`, `timestep_sampling`, `logit_*` and `guidance` existed trained
    with their defaults: it resumes under a default config and is refused under a changed one."""
    data = DataConfig(source="toy-shapes")
    new = TrainConfig(iterations=1, data=data).validate().to_dict()
    old = {k: v for k, v in new.items() if k not in ("objective", "timestep_sampling", "logit_mean", "logit_std",
                                                      "guidance")}
    check_resumable({"config": old}, new, tmp_path)
    changed = TrainConfig(iterations=1, data=data, timestep_sampling="logit-normal").validate().to_dict()
    with pytest.raises(CheckpointError, match="timestep_sampling"):
        check_resumable({"config": old}, changed, tmp_path)


@pytest.mark.parametrize("field,value", [("objective", "v"), ("timestep_sampling", "normal"), ("logit_std", 0.0),
                                         ("guidance", float("nan")), ("logit_mean", "x")])
def test_flow_config_fields_are_validated(field, value):
    cfg = dict(iterations=1, **{field: value})
    with pytest.raises(ILFConfigError, match=field):
        TrainConfig(**cfg).validate()
