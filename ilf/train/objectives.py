"""Training objectives (paper Sec. 3.2 "Fast Approximate Distillation", Fig. 11; METHOD.md "Training").

For clean latents x0, noise eps and t ~ U{0..T-1}:
    x_t     = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                   # student input
    student = ILF(x_t, t)                                               # feedback on, t_post = t
  fast:     teacher = backbone(x_{t//2}, t//2), x_{t//2} with the same x0 and eps   # ONE teacher forward
  standard: x_s = K DPM-Solver++(2M) teacher steps from (x_t, t) to s = t//2; teacher = the noise one DDIM
            step from x_t would need to land on x_s: (x_s - r x_t) / (sqrt(1-abar_s) - r sqrt(1-abar_t)),
            r = sqrt(abar_s / abar_t)
  none:     no teacher
    loss = mse(student, eps) [+ mse(student, teacher)]                  # noise channels only (first C of 2C)

Flow-matching backbones (FLUX.1, SD3.5, Qwen-Image, Sana) use `ilf.train.flow.FlowObjective`, the same objective on the
rectified-flow path; `make_objective` picks the one a backbone was trained with.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attach import bypass
from ..errors import ILFConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_inputs(batch: dict[str, torch.Tensor], transformer: nn.Module, resolution: int | None = None) -> dict[str, Any]:
    """The conditioning keyword arguments of one transformer call (PixArt captions or DiT class labels)."""
    if "class_labels" in batch:
        return {"class_labels": batch["class_labels"]}
    b = batch["prompt_embeds"].shape[0]
    added = {"resolution": None, "aspect_ratio": None}
    if getattr(transformer, "use_additional_conditions", False):  # PixArt-alpha 1024: square crops at `resolution`
        if resolution is None:
            raise ValueError("this PixArt backbone uses additional conditions: pass the image resolution in pixels")
        dev = batch["prompt_embeds"].device
        added = {"resolution": torch.tensor([[resolution, resolution]], device=dev, dtype=torch.float32).repeat(b, 1),
                 "aspect_ratio": torch.ones(b, 1, device=dev)}
    return {"encoder_hidden_states": batch["prompt_embeds"], "encoder_attention_mask": batch["prompt_attention_mask"],
            "added_cond_kwargs": added}


def noise_prediction(transformer: nn.Module, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """eps(x, t) in float32: the first C output channels (learned-variance models output 2C)."""
    out = transformer(x, timestep=t, return_dict=False, **kwargs)[0]
    return out[:, : x.shape[1]].float()


def _coeffs(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t, lambda_t) = (sqrt(abar), sqrt(1 - abar), log(alpha/sigma)) as (B, 1, 1, 1) float64."""
    a = alphas_cumprod.to(torch.float64)[t.cpu()].view(-1, 1, 1, 1)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    return alpha, sigma, alpha.log() - sigma.log()


def dpm_solver_pp_teacher(model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, steps: int,
                          alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K DPM-Solver++(2M) steps per sample from (x_t, t) to s on the integer grid round(t + (s - t) k / K).

    The same update as diffusers' `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="midpoint")` (first step first-order), batched over per-sample grids; a zero-length step
    (t - s < K) leaves x unchanged. Returns (x_s, the teacher's eps at (x_t, t)); K model evaluations.
    """
    k = torch.arange(steps + 1, dtype=torch.float64)
    grid = torch.round(t.double().cpu()[:, None] + (s.double().cpu() - t.double().cpu())[:, None] * k / steps).long()
    dev = x_t.device
    x = x_t.float()
    d_prev = h_prev = eps0 = None
    for i in range(steps):
        ti, tn = grid[:, i], grid[:, i + 1]
        eps = model_fn(x, ti.to(dev))
        eps0 = eps if eps0 is None else eps0
        a_i, s_i, l_i = _coeffs(alphas_cumprod, ti)
        a_n, s_n, l_n = _coeffs(alphas_cumprod, tn)
        d = (x - s_i.to(dev).float() * eps) / a_i.to(dev).float()  # data prediction (dpmsolver++)
        h = l_n - l_i
        phi = torch.expm1(-h)  # exp(-h) - 1
        x_new = (s_n / s_i).to(dev).float() * x - (a_n * phi).to(dev).float() * d
        if d_prev is not None:  # second order (midpoint): D1 = (D - D_prev) / r0, r0 = h_prev / h
            ok = (h_prev > 0) & (h > 0)
            ratio = torch.where(ok, h / torch.where(ok, h_prev, torch.ones_like(h_prev)), torch.zeros_like(h))
            x_new = x_new - (0.5 * a_n * phi * ratio).to(dev).float() * (d - d_prev)
        x, d_prev, h_prev = x_new, d, h
    return x, eps0


def ddim_equivalent_noise(x_t: torch.Tensor, x_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                          alphas_cumprod: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """The eps for which one DDIM step (eta = 0) from (x_t, t) lands on x_s at s; `fallback` where s == t."""
    a_t = alphas_cumprod.to(torch.float64)[t.cpu()].view(-1, 1, 1, 1)
    a_s = alphas_cumprod.to(torch.float64)[s.cpu()].view(-1, 1, 1, 1)
    r = (a_s / a_t).sqrt()
    denom = (1 - a_s).sqrt() - r * (1 - a_t).sqrt()  # = sqrt(abar_s) (sigma_s/alpha_s - sigma_t/alpha_t) < 0 for s < t
    same = (s == t).view(-1, 1, 1, 1).to(x_t.device)
    safe = torch.where(denom == 0, torch.ones_like(denom), denom)
    eps = (x_s - r.to(x_t.device).float() * x_t.float()) / safe.to(x_t.device).float()
    return torch.where(same, fallback, eps)


class Objective:
    """One micro-batch's per-sample losses for `distill` in fast | standard | none (epsilon prediction).

    `num_train_timesteps` is T (training timesteps are drawn from 0..T-1); `inputs(batch)` builds the call's
    conditioning, `noised` the student input, `predict` the model's prediction (float32, the latent layout),
    `target` the reconstruction target. Subclasses (`FlowObjective`) replace these.
    """

    def __init__(self, mode: str, transformer: nn.Module, alphas_cumprod: torch.Tensor, teacher_steps: int = 8,
                 autocast: Callable[[], Any] | None = None, resolution: int | None = None):
        self._setup(mode, transformer, teacher_steps, autocast, len(alphas_cumprod))
        self.ac = alphas_cumprod.detach().to(torch.float64).cpu()
        self.resolution = resolution

    def _setup(self, mode: str, transformer: nn.Module, teacher_steps: int, autocast: Callable[[], Any] | None,
               num_train_timesteps: int) -> None:
        """The fields every objective has."""
        if mode not in ("fast", "standard", "none"):
            raise ILFConfigError("distill", mode, ("fast", "standard", "none"))
        self.mode, self.transformer, self.K = mode, transformer, teacher_steps
        self.num_train_timesteps = num_train_timesteps
        self.sampler: Callable[[torch.Generator], torch.Tensor] | None = None  # None: TrainStream's U{0..T-1}
        self._autocast = autocast  # () -> context manager (bf16 autocast on GPU), or None
        self.resolution: int | None = None

    def _ctx(self):
        return self._autocast() if self._autocast is not None else torch.autocast("cpu", enabled=False)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The conditioning keyword arguments of the transformer calls for `batch`."""
        return model_inputs(batch, self.transformer, self.resolution)

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The model's eps(x, t) in float32 (feedback on unless called inside `ilf.bypass`)."""
        return noise_prediction(self.transformer, x, t, kwargs)

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The reconstruction target: the noise eps."""
        return eps.float()

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ac[t.cpu()].view(-1, 1, 1, 1).to(x0.device)
        return (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()

    def teacher(self, x0: torch.Tensor, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor:
        """The distillation target (no grad, feedback bypassed: the plain frozen backbone)."""
        s = torch.div(t, 2, rounding_mode="floor")
        with torch.no_grad(), bypass(self.transformer), self._ctx():
            if self.mode == "fast":
                return noise_prediction(self.transformer, self.noised(x0, eps, s), s, kwargs)
            fn = lambda x, tt: noise_prediction(self.transformer, x, tt, kwargs)  # noqa: E731
            x_s, eps0 = dpm_solver_pp_teacher(fn, x_t, t, s, self.K, self.ac)
            return ddim_equivalent_noise(x_t, x_s, t, s, self.ac, eps0)

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(per-sample loss (B,), per-sample terms) for a collated micro-batch already on the device."""
        x0, eps, t = batch["latents"], batch["noise"], batch["timestep"]
        kwargs = self.inputs(batch)
        x_t = self.noised(x0, eps, t)
        with self._ctx():
            student = self.predict(x_t, t, kwargs)
        recon = F.mse_loss(student, self.target(x0, eps), reduction="none").flatten(1).mean(1)
        terms = {"loss_recon": recon.detach()}
        loss = recon
        if self.mode != "none":
            target = self.teacher(x0, eps, x_t, t, kwargs)
            distill = F.mse_loss(student, target, reduction="none").flatten(1).mean(1)
            terms["loss_distill"] = distill.detach()
            loss = recon + distill
        return loss, terms


def make_objective(objective: str, mode: str, pipe: Any, teacher_steps: int = 8,
                   autocast: Callable[[], Any] | None = None, resolution: int | None = None,
                   latent_shape: tuple[int, int, int] | None = None, timestep_sampling: str = "uniform",
                   logit_mean: float = 0.0, logit_std: float = 1.0, guidance: float = 3.5,
                   max_sequence_length: int | None = None) -> Objective:
    """The objective a pipeline's backbone trains with: `Objective` (epsilon, DDPM schedule) or `FlowObjective`.

    Args:
        objective: "auto" (from the backbone, `ilf.train.backbone.objective_of`), "epsilon" or "flow".
        mode: `distill`, fast | standard | none.
        pipe: the stock pipeline (its transformer, with ILF attached, and its scheduler's config are used).
        teacher_steps: K for `standard`.
        autocast: () -> an autocast context for every forward, or None.
        resolution: the image side in pixels (PixArt-alpha 1024's additional conditions).
        latent_shape: (C, H, W) of the training latents (flow: the resolution-dependent shift of dynamic shifting).
        timestep_sampling, logit_mean, logit_std, guidance: the flow objective's (`FlowObjective`).
        max_sequence_length: the caption length the latents were encoded with (Wan pads the shards' captions back
            to it, `ilf.train.video.WanFlowObjective`).

    Returns:
        The objective; its `num_train_timesteps` is T of the training timestep indices.
    """
    from .backbone import objective_of, training_noise_schedule

    if objective_of(objective, pipe) == "flow":
        from .flow import FlowObjective
        from .video import WanFlowObjective, is_video_model

        if is_video_model(pipe.transformer):
            return WanFlowObjective(mode, pipe.transformer, dict(pipe.scheduler.config), teacher_steps, autocast,
                                    timestep_sampling, logit_mean, logit_std, max_sequence_length)

        return FlowObjective(mode, pipe.transformer, dict(pipe.scheduler.config), latent_shape, teacher_steps,
                             autocast, timestep_sampling, logit_mean, logit_std, guidance)
    return Objective(mode, pipe.transformer, training_noise_schedule(pipe).alphas_cumprod, teacher_steps, autocast,
                     resolution)
