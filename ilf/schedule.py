"""Feedback-aware inference scheduling (paper Sec. 3.3, eqs. 4-5; METHOD.md).

Two pure functions: which steps run feedback, and the post-feedback time condition `t_post`.
The diffusion scheduler itself is untouched: it still denoises x_t as at t.
"""
from __future__ import annotations

from .config import FeedbackConfig, FeedbackSteps, _check_feedback_steps
from .errors import ILFConfigError


def resolve_feedback_steps(spec: FeedbackSteps, num_steps: int) -> list[int]:
    """Step indices (0-based, sorted) on which feedback runs, for a run of `num_steps` steps (paper Sec. 3.3).

    Args:
        spec: `"all"`, `"none"`, `"first:k"`, `"last:k"`, `"outer:k"` (k - k//2 first, k//2 last),
            `"skip-inner:k"` (every step but the middle k: start = (S-k)//2), `"alternating"` (steps 0, 2, 4,
            ...), or explicit step indices (`FeedbackConfig.feedback_steps`).
        num_steps: S, the sampling steps of the run.

    Returns:
        The sorted step indices in 0..S-1.

    Raises:
        ILFConfigError: S < 1, the spec is malformed, k > S, or an index is >= S.

    Example:
        ```py
        from ilf import resolve_feedback_steps

        resolve_feedback_steps("outer:4", 10)  # [0, 1, 8, 9]: Table 1, the same as "skip-inner:6"
        ```
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ILFConfigError("num_steps", num_steps, "an integer >= 1")
    _check_feedback_steps(spec)
    s = num_steps
    if isinstance(spec, (list, tuple)):
        bad = [i for i in spec if i >= s]
        if bad:
            raise ILFConfigError("feedback_steps", list(spec), f"step indices in 0..{s - 1} for {s} inference steps (got {bad})")
        return sorted(spec)
    if spec == "all":
        return list(range(s))
    if spec == "none":
        return []
    if spec == "alternating":
        return list(range(0, s, 2))
    kind, k_str = spec.split(":")
    k = int(k_str)
    if k > s:
        raise ILFConfigError("feedback_steps", spec, f"k <= the number of inference steps ({s})")
    if kind == "first":
        return list(range(k))
    if kind == "last":
        return list(range(s - k, s))
    if kind == "outer":
        head = k - k // 2
        return sorted(set(range(head)) | set(range(s - k // 2, s)))
    # skip-inner:k -- feedback everywhere except the middle k steps
    start = (s - k) // 2
    return [i for i in range(s) if not start <= i < start + k]


def loop_ratio(config: FeedbackConfig, num_blocks: int) -> float:
    """rho of eq. 4: m/n (the default, METHOD.md) or n/m as printed (n = backbone depth, m = loop size)."""
    n, m = num_blocks, config.loop_size
    return n / m if config.ratio == "n/m" else m / n


def post_feedback_timestep(config: FeedbackConfig, num_blocks: int, t: float, t_next: float, step_index: int,
                           num_train_timesteps: int = 1000) -> float:
    """The post-feedback time condition t_post of one sampling step (paper Sec. 3.3, eqs. 4-5; METHOD.md).

    With i = t - t_next the step's spacing and rho = m/N (or N/m, `config.ratio`): default: t; uniform:
    t - i/2; rescale (eq. 4): t - i*rho; anneal (eq. 5): the first step as rescale, later
    t - max(i*rho*(t/1000), 10). Timesteps are in the scheduler's units (`scheduler.timesteps`: 0..T-1 on a
    DDPM grid; sigma * T on a flow-matching grid, which starts at T and ends at 0, not the model's sigma).

    Args:
        config: the ILF settings (`t_post`, `ratio`, and m from `loop_start` / `loop_end`).
        num_blocks: N, the backbone's depth.
        t: the step's timestep.
        t_next: the scheduler's next timestep (0 after the last step).
        step_index: the step's 0-based index in the run (anneal treats step 0 as rescale).
        num_train_timesteps: T, the scheduler's training timesteps.

    Returns:
        t_post, clamped to [0, max(t, T-1)] (a flow-matching grid's first timestep is T itself).

    Raises:
        ILFConfigError: an unknown strategy (a validated config never has one).

    Example:
        ```py
        from ilf import FeedbackConfig, post_feedback_timestep

        post_feedback_timestep(FeedbackConfig(8, 19), 28, t=999, t_next=899, step_index=0)  # 999 - 100*12/28 = 956.14
        ```
    """
    i = float(t) - float(t_next)
    rho = loop_ratio(config, num_blocks)
    strategy = config.t_post
    if strategy == "default":
        tp = float(t)
    elif strategy == "uniform":
        tp = t - i / 2
    elif strategy == "rescale" or (strategy == "anneal" and step_index == 0):
        tp = t - i * rho
    elif strategy == "anneal":
        tp = t - max(i * rho * (float(t) / 1000.0), 10.0)
    else:  # validated configs never get here
        raise ILFConfigError("t_post", strategy, ("default", "uniform", "rescale", "anneal"))
    return float(min(max(tp, 0.0), max(float(t), num_train_timesteps - 1)))
