"""Fast Approximate Distillation on the flow-matching path (FLUX.1, SD3.5, Qwen-Image, Sana; METHOD.md "Training").

Rectified flow (SD3 paper, Esser et al. 2024, Sec. 2; FLUX.1 the same): for clean latents x0 (B, C, H, W) and
noise eps, the noise level s in [0, 1] and the model predicts the velocity v = d x_s / d s = eps - x0:
    s       = sigmas[t], t in 0..T-1 a training index (T = scheduler's num_train_timesteps), `training_sigmas`
    x_s     = (1 - s) x0 + s eps                                      # student input
    student = ILF(x_s, s)                                              # feedback on, t_post = t
  fast:     teacher = backbone(x_{s/2}, s/2), x_{s/2} = (1 - s/2) x0 + (s/2) eps   # ONE teacher forward ("t/2")
  standard: x' = K Euler teacher steps from (x_s, s) to s/2 on s_k = s - (s/2) k/K, the update of
            `FlowMatchEulerDiscreteScheduler.step` (x <- x + (s_{k+1} - s_k) v(x, s_k)); teacher = the velocity
            one Euler step from x_s would need to land on x': x' = x_s + (s/2 - s) v*, so v* = 2 (x_s - x') / s
  none:     no teacher
    loss = mse(student, eps - x0) [+ mse(student, teacher)]           # all C channels

The model takes time in its own units: s * T * `timestep_scale` of its adapter (FLUX, Qwen-Image: s, as their
pipelines pass t / 1000; SD3, Sana: 1000 s, the scheduler's timestep). FLUX.1-dev's guidance embedding gets
`guidance` (FluxPipeline's `guidance_scale`, 3.5 by default). Each family's call is built as its pipeline builds it
(`ilf.train.flow_calls`: FLUX's and Qwen-Image's 2x2 packing with their pipelines' `_pack_latents` /
`_unpack_latents`, FLUX's `img_ids`/`txt_ids`, Qwen-Image's `img_shapes` and caption mask, Sana's caption mask).
Sana samples with DPM-Solver++ on flow sigmas (`use_flow_sigmas`, `flow_shift`); its training noise levels are the
flow-matching table at that shift (`flow_matching_config`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SanaTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from torch import nn

from ..adapters import adapter_for
from ..attach import bypass
from ..errors import ILFConfigError
from .config import TIMESTEP_SAMPLING
from .flow_calls import family_calls
from .objectives import Objective

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, C, H, W), s (B,)) -> v


def image_seq_len(transformer: nn.Module, latent_shape: tuple[int, int, int]) -> int:
    """Image tokens of one call: (H / 2) (W / 2) for FLUX and Qwen-Image (2x2 packing) and for SD3 (patch_size 2);
    H W for Sana (patch_size 1)."""
    _, h, w = latent_shape
    p = 2 if isinstance(transformer, FluxTransformer2DModel) else int(transformer.config.patch_size)
    return (h // p) * (w // p)


def flow_matching_config(scheduler_config: dict[str, Any]) -> dict[str, Any]:
    """A `FlowMatchEulerDiscreteScheduler` config for a pipeline's scheduler config: itself, or for a multistep
    solver on flow sigmas (`use_flow_sigmas`: Sana's `DPMSolverMultistepScheduler`, Wan's `UniPCMultistepScheduler`)
    the flow-matching table with T = `num_train_timesteps` and its `flow_shift` as `shift` (the sigmas
    s' = shift s / (1 + (shift - 1) s) that its `set_timesteps` samples on).

    Raises:
        ILFConfigError: a flow-sigma solver with dynamic shifting (no resolution-free table).
    """
    if not scheduler_config.get("use_flow_sigmas"):
        return dict(scheduler_config)
    if scheduler_config.get("use_dynamic_shifting"):
        raise ILFConfigError("scheduler", "use_flow_sigmas with use_dynamic_shifting=True",
                             "a flow-sigma scheduler with a fixed flow_shift (the published configs')")
    return {"num_train_timesteps": int(scheduler_config.get("num_train_timesteps", 1000)),
            "shift": float(scheduler_config.get("flow_shift") or 1.0), "use_dynamic_shifting": False}


def training_sigmas(scheduler_config: dict[str, Any], seq_len: int | None = None) -> torch.Tensor:
    """The T training noise levels of a `FlowMatchEulerDiscreteScheduler` config (or of `flow_matching_config`'s
    for a flow-sigma DPM-Solver++ config), ascending, float64.

    The scheduler's own `sigmas` (1/T .. 1, shifted by `shift` unless `use_dynamic_shifting`); with dynamic
    shifting (FLUX.1-dev) shifted by `time_shift(mu)` at mu = `calculate_shift(seq_len, ...)`, the shift the
    pipeline applies at this resolution; `shift_terminal` stretched as the scheduler does.

    Args:
        scheduler_config: the pipeline's `scheduler.config`.
        seq_len: image tokens per sample (`image_seq_len`); required with dynamic shifting.

    Returns:
        (T,) sigmas in (0, 1], index t = 0..T-1 ascending (a larger index is noisier, as DDPM's t).
    """
    sched = FlowMatchEulerDiscreteScheduler.from_config(flow_matching_config(scheduler_config))
    c = sched.config
    sigmas = sched.sigmas.to(torch.float64)
    if c.use_dynamic_shifting:
        if seq_len is None:
            raise ValueError("dynamic shifting needs the image sequence length")
        mu = calculate_shift(seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sigmas = sched.time_shift(mu, 1.0, sigmas)
    if c.get("shift_terminal"):
        sigmas = sched.stretch_shift_to_terminal(sigmas)
    return sigmas.flip(0).to(torch.float64)


def timestep_sampler(kind: str, num_train_timesteps: int, logit_mean: float = 0.0,
                     logit_std: float = 1.0) -> Callable[[torch.Generator], torch.Tensor] | None:
    """How a training index t in 0..T-1 is drawn: None for `uniform` (`TrainStream`'s U{0..T-1}); for
    `logit-normal`, u = sigmoid(logit_mean + logit_std n), n ~ N(0, 1), t = min(floor(u T), T - 1): SD3's
    logit-normal sampling (SD3 paper Sec. 3.1) over the scheduler's training sigmas, as diffusers'
    `compute_density_for_timestep_sampling` does in its SD3/FLUX training scripts (there on a descending table;
    here ascending, so logit_mean > 0 favours more noise, as in the paper)."""
    if kind not in TIMESTEP_SAMPLING:
        raise ILFConfigError("timestep_sampling", kind, TIMESTEP_SAMPLING)
    if kind == "uniform":
        return None
    return LogitNormalIndex(num_train_timesteps, logit_mean, logit_std)


class LogitNormalIndex:
    """t = min(floor(T sigmoid(mean + std n)), T - 1), n ~ N(0, 1) from the sample's generator (picklable, for
    DataLoader workers)."""

    def __init__(self, num_train_timesteps: int, mean: float, std: float):
        self.T, self.mean, self.std = num_train_timesteps, float(mean), float(std)

    def __call__(self, g: torch.Generator) -> torch.Tensor:
        u = torch.sigmoid(self.mean + self.std * torch.randn((), generator=g, dtype=torch.float64))
        return torch.clamp((u * self.T).floor().long(), max=self.T - 1)


def per_sample(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """s (B,) on x's device, shaped (B, 1, ..., 1) to broadcast over x (B, C, H, W) or video x (B, C, F, H, W)."""
    return s.to(x.device).view(-1, *[1] * (x.ndim - 1))


def noised(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps (float32; s (B,) float64)."""
    s = per_sample(s, x0)
    return ((1 - s) * x0.double() + s * eps.double()).float()


def euler_teacher(velocity: VelocityFn, x_s: torch.Tensor, s: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K Euler steps per sample from (x_s, s) to s/2 on s_k = s - (s/2) k / K (`FlowMatchEulerDiscreteScheduler.step`).

    Args:
        velocity: the teacher, (x, s) -> v (float32).
        x_s: (B, C, H, W) the state at s.
        s: (B,) float64 noise levels.
        steps: K (K model evaluations).

    Returns:
        (x at s/2, the teacher's velocity at (x_s, s)).
    """
    x, v0 = x_s.float(), None
    for k in range(steps):
        sk, sn = s - s / 2 * k / steps, s - s / 2 * (k + 1) / steps
        v = velocity(x, sk)
        v0 = v if v0 is None else v0
        x = x + per_sample(sn - sk, x).float() * v
    return x, v0


def euler_equivalent_velocity(x_s: torch.Tensor, x_half: torch.Tensor, s: torch.Tensor,
                              fallback: torch.Tensor) -> torch.Tensor:
    """v* = 2 (x_s - x_half) / s: the velocity one Euler step from (x_s, s) to s/2 needs to land on x_half;
    `fallback` where s == 0."""
    s = per_sample(s, x_s)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    v = (2 * (x_s.double() - x_half.double()) / safe).float()
    return torch.where(s == 0, fallback, v)


def flow_inputs(transformer: nn.Module, batch: dict[str, torch.Tensor], guidance: float) -> dict[str, Any]:
    """The conditioning of one call, as the family's pipeline passes it (`ilf.train.flow_calls`): FLUX/SD3 prompt
    and pooled embeddings (FLUX also txt_ids, guidance), Qwen-Image and Sana prompt embeddings and caption mask."""
    return family_calls(transformer)[0](transformer, batch, guidance)


def velocity_prediction(transformer: nn.Module, x: torch.Tensor, model_t: torch.Tensor,
                        kwargs: dict[str, Any]) -> torch.Tensor:
    """v(x, t) in float32, (B, C, H, W), from the call the family's pipeline makes (`ilf.train.flow_calls`: FLUX
    and Qwen-Image pack x and unpack their output). The latents and embeddings enter in the model's dtype, as the
    pipelines pass them (guidance and time stay float32)."""
    return family_calls(transformer)[1](transformer, x, model_t, kwargs)


def model_time_scale(transformer: nn.Module, scheduler_config: dict[str, Any]) -> float:
    """The model's time per noise level s: T x the adapter's `timestep_scale` (FLUX, Qwen-Image: 1, as their
    pipelines pass t / 1000; SD3, Sana: T, the scheduler's timestep), for Sana also x its config's
    `timestep_scale` (SanaPipeline multiplies the timestep by it; 1.0 for the released models)."""
    scale = float(scheduler_config.get("num_train_timesteps", 1000)) * adapter_for(transformer).timestep_scale
    if isinstance(transformer, SanaTransformer2DModel):
        scale *= float(transformer.config.timestep_scale)
    return scale


class FlowObjective(Objective):
    """`Objective` on the flow-matching path (module doc): velocity target, teacher at s/2, Euler `standard`.

    Args:
        mode: fast | standard | none.
        transformer: the FLUX/SD3/Qwen-Image/Sana transformer with ILF attached.
        scheduler_config: its pipeline's `FlowMatchEulerDiscreteScheduler` config, or Sana's flow-sigma
            `DPMSolverMultistepScheduler` config (`training_sigmas`, `model_time_scale`).
        latent_shape: (C, H, W) of the training latents (the dynamic shift's sequence length).
        teacher_steps: K Euler steps for `standard`.
        autocast: () -> autocast context, or None.
        timestep_sampling: uniform | logit-normal (`timestep_sampler`), with `logit_mean`, `logit_std`.
        guidance: the guidance embedding's value for guidance-embedded FLUX (FLUX.1-dev).
    """

    def __init__(self, mode: str, transformer: nn.Module, scheduler_config: dict[str, Any],
                 latent_shape: tuple[int, int, int] | None, teacher_steps: int = 8,
                 autocast: Callable[[], Any] | None = None, timestep_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0, guidance: float = 3.5):
        seq = image_seq_len(transformer, latent_shape) if latent_shape is not None else None
        self.sigmas = training_sigmas(scheduler_config, seq)
        self._setup(mode, transformer, teacher_steps, autocast, len(self.sigmas))
        self.time_scale = model_time_scale(transformer, scheduler_config)
        self.sampler = timestep_sampler(timestep_sampling, len(self.sigmas), logit_mean, logit_std)
        self.guidance = float(guidance)
        if not math.isfinite(self.guidance):
            raise ILFConfigError("guidance", guidance, "a finite number")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """s = sigmas[t] for training indices t (B,), float64 on the host."""
        return self.sigmas[t.cpu().long()]

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return flow_inputs(self.transformer, batch, self.guidance)

    def velocity(self, x: torch.Tensor, s: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v(x, s) for noise levels s (B,) float64: the model gets s in its own time units."""
        model_t = (s * self.time_scale).to(device=x.device, dtype=torch.float32)
        return velocity_prediction(self.transformer, x, model_t, kwargs)

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        return self.velocity(x, self.sigma(t), kwargs)

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The reconstruction target: the velocity v = eps - x0."""
        return eps.float() - x0.float()

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noised(x0, eps, self.sigma(t))

    def teacher(self, x0: torch.Tensor, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor:
        """The distillation target (no grad, feedback bypassed: the plain frozen backbone)."""
        s = self.sigma(t)
        with torch.no_grad(), bypass(self.transformer), self._ctx():
            if self.mode == "fast":
                return self.velocity(noised(x0, eps, s / 2), s / 2, kwargs)
            x_half, v0 = euler_teacher(lambda x, sk: self.velocity(x, sk, kwargs), x_t, s, self.K)
            return euler_equivalent_velocity(x_t, x_half, s, v0)
