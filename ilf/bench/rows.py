"""The benchmark rows: the paper's baselines, cache and ILF rows (Tables 1, 3, 4) and peer methods.

Block indices are the paper's (28-block backbones). Speedups are against `baseline-20`, the paper's
reference (Table 1: 560 block forwards). The flow-matching backbones (FLUX.1, SD3.5, Qwen-Image, Wan) get
Table 1's rows scaled to their depth and model-card steps (`scaled_rows`), their reference `baseline-S` first. Peer rows are labelled `peer:`; a method from another library
plugs in as a row with its own `apply` / `detach` (and, if it needs one, a `context` around each sampling
run, e.g. diffusers' `cache_context`), added with `register_row`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from torch import nn

from ..accounting import expected_block_forwards
from ..attach import remove
from ..cache import apply_cache
from ..config import CacheConfig, FeedbackConfig
from ..errors import ILFConfigError
from ..feedback import apply_feedback
from ..flops import ModelFlops, expected_flops, flops_of_block_forwards

REFERENCE_ROW = "baseline-20"


@dataclass(frozen=True)
class BenchRow:
    """One row: a method, its config and its number of sampling steps, and how to attach / detach it.

    `apply(model, config, scheduler)` attaches the method (None: the ilf method named by `method`:
    baseline -> nothing, cache -> `apply_cache`, ilf -> `apply_feedback`); `detach(model)` removes it
    (None: `ilf.remove`); `context(model)` is entered around every sampling run (None: nothing);
    `analytic(num_blocks, steps)` is the analytic block-forward count (None: `ilf.expected_block_forwards`,
    "dynamic" for methods only the run-time counter can count).
    """

    name: str
    method: str  # baseline | cache | ilf | a peer's name (fbcache, ...)
    steps: int
    config: Any = None  # None | CacheConfig | FeedbackConfig | a peer's config
    label: str = ""
    apply: Callable[[nn.Module, Any, Any], Any] | None = None
    detach: Callable[[nn.Module], Any] | None = None
    context: Callable[[nn.Module], ContextManager] | None = None
    analytic: Callable[[int, int], int | str] | None = None
    calls_per_step: int = 1  # transformer calls per step (2: guidance as separate cond / uncond calls)

    def attach(self, model: nn.Module, scheduler: Any) -> None:
        """Attach this row's method to `model` (nothing for a baseline)."""
        if self.apply is not None:
            self.apply(model, self.config, scheduler)
        elif self.method == "cache":
            apply_cache(model, self.config, scheduler=scheduler)
        elif self.method == "ilf":
            apply_feedback(model, self.config, scheduler=scheduler)
        elif self.method != "baseline":
            raise ILFConfigError("method", self.method, "baseline | cache | ilf, or a row with its own `apply`")

    def remove(self, model: nn.Module) -> None:
        """Detach this row's method: the model is the plain backbone again."""
        (self.detach or remove)(model)

    def run_context(self, model: nn.Module) -> ContextManager:
        """What every sampling run of this row is wrapped in (a no-op unless the row says otherwise)."""
        return self.context(model) if self.context is not None else contextlib.nullcontext()

    def block_forwards_analytic(self, num_blocks: int) -> int | str:
        """Analytic block forwards per image (an int, or "dynamic"), every call of each step."""
        n = self.analytic(num_blocks, self.steps) if self.analytic is not None else \
            expected_block_forwards(self.config, num_blocks, self.steps)
        return n * self.calls_per_step if isinstance(n, int) else n

    def flops_analytic(self, flops: ModelFlops) -> int | str:
        """Analytic FLOPs per image (`ilf.flops.expected_flops`; a row's own `analytic` count: on equal blocks
        only, else "dynamic")."""
        if self.analytic is not None:
            f = flops_of_block_forwards(self.analytic(len(flops.blocks), self.steps), flops, self.steps)
            return f * self.calls_per_step if isinstance(f, int) else f
        return expected_flops(self.config, flops, self.steps, self.calls_per_step)


def _apply_peer(model: nn.Module, config: Any, scheduler: Any, steps: int) -> None:
    from ..peers import apply_peer  # imported on use: cache-dit / diffusers' hooks load only for peer rows

    apply_peer(model, config, num_steps=steps, scheduler=scheduler)


def _peer_row(name: str, steps: int, config_name: str, settings: dict[str, Any], label: str) -> BenchRow:
    """A peer row (ilf.peers): attached with `apply_peer`, removed by `ilf.remove`, counted at run time."""
    from ..peers import peer_config

    return BenchRow(name, config_name, steps, peer_config(config_name, settings), label,
                    apply=lambda m, c, s: _apply_peer(m, c, s, steps))


ROWS: dict[str, BenchRow] = {}


def register_row(row: BenchRow, replace: bool = False) -> BenchRow:
    """Add a row to `ROWS` (e.g. a peer method from cache-dit or diffusers' hooks); `replace` to redefine one."""
    if row.name in ROWS and not replace:
        raise ILFConfigError("row", row.name, "a new row name (or replace=True)")
    ROWS[row.name] = row
    return row


for _row in [
    BenchRow("baseline-20", "baseline", 20, None, "Table 1: 20-step baseline"),
    BenchRow("baseline-12", "baseline", 12, None, "Table 1: 12-step baseline"),
    BenchRow("cache-t1", "cache", 20, CacheConfig("inner", 18, 3), "Table 1: cache inner 18, every 3rd step"),
    BenchRow("cache-t4", "cache", 20, CacheConfig("inner", 18, 2), "Table 4: cache inner 18, every 2nd step"),
    BenchRow("ilf-t1", "ilf", 10, FeedbackConfig(8, 19, "outer:4"), "Table 1: ILF loop 8..19, feedback steps 0,1,8,9"),
    BenchRow("ilf-t4", "ilf", 12, FeedbackConfig(8, 19, "outer:4"), "Table 4: ILF loop 8..19, feedback steps 0,1,10,11"),
    BenchRow("ilf-t3-small", "ilf", 12, FeedbackConfig(0, 5, "all"), "Table 3: ILF loop 0..5, feedback every step"),
]:
    register_row(_row)
for _row in [
    # peers (ilf.peers): diffusers' hooks and cache-dit, at the Table 1 budget where the budget is static
    ("fbcache-0.05", 20, "fbcache", {"threshold": 0.05}, "peer: diffusers FirstBlockCache, threshold 0.05 (dynamic)"),
    ("fbcache-0.2", 20, "fbcache", {"threshold": 0.2}, "peer: diffusers FirstBlockCache, threshold 0.2 (dynamic)"),
    ("dbcache-static", 20, "dbcache", {"compute_steps": 11}, "peer: cache-dit DBCache F1B0, 11 of 20 steps (317)"),
    ("dbcache-static-ts", 20, "dbcache", {"compute_steps": 11, "taylorseer": True},
     "peer: cache-dit DBCache F1B0 + TaylorSeer, 11 of 20 steps (317)"),
    ("dbcache-dynamic", 20, "dbcache", {"policy": "dynamic", "residual_diff_threshold": 0.12, "max_warmup_steps": 4},
     "peer: cache-dit DBCache, dynamic residual threshold 0.12"),
    ("taylorseer", 20, "taylorseer", {"cache_interval": 2, "disable_cache_before_step": 4},
     "peer: diffusers TaylorSeer, every 2nd step after step 4 (336)"),
    ("pab", 20, "pab", {"spatial_skip_range": 2, "cross_skip_range": 4},
     "peer: diffusers PyramidAttentionBroadcast (saves inside blocks: 560)"),
]:
    register_row(_peer_row(*_row))
DEFAULT_ROWS: tuple[str, ...] = tuple(ROWS)


def default_loop(num_blocks: int) -> tuple[int, int]:
    """The paper's loop 8..19 of 28 as the half-open range [8, 20) scaled to N blocks (METHOD.md "Architectures"):
    (b, e) = (round(8N/28), round(20N/28) - 1)."""
    return round(8 * num_blocks / 28), round(20 * num_blocks / 28) - 1


def scaled_rows(num_blocks: int, steps: int, calls: int = 1) -> dict[str, BenchRow]:
    """Table 1's rows scaled to a backbone of N blocks sampled in S steps by its model card (flow matching).

    `baseline-S` is the reference; `baseline-S/2` runs ILF's steps; `ilf-t1` samples in round(S/2) steps (Table 1:
    10 of 20) with the default loop and feedback on the outer 40% of its steps (Table 1: 4 of 10, `outer:k`, k
    even); `cache-t1` caches the inner round(18N/28) blocks, recomputed every 3rd step; `dbcache-t1` is cache-dit's
    DBCache F1B0 with K of S steps computing the middle blocks, the largest K within ILF's block forwards.

    Args:
        num_blocks: N.
        steps: S, the model card's sampling steps.
        calls: transformer calls per step (2 where guidance runs as separate calls).

    Returns:
        The rows by name, the reference first.
    """
    from ..accounting import expected_block_forwards

    n, s = num_blocks, steps
    b, e = default_loop(n)
    s_ilf = max(2, round(s / 2))
    k = 2 * max(1, round(0.4 * s_ilf / 2))
    ilf = FeedbackConfig(b, e, f"outer:{k}")
    ilf_blocks = expected_block_forwards(ilf, n, s_ilf)
    c = round(18 * n / 28)
    compute = min(s, max(1, (ilf_blocks - s) // (n - 1)))  # at most ILF's budget (as `dbcache-static`)
    rows = [
        BenchRow(f"baseline-{s}", "baseline", s, None, f"model card: {s}-step baseline", calls_per_step=calls),
        BenchRow(f"baseline-{s_ilf}", "baseline", s_ilf, None, f"{s_ilf}-step baseline (ILF's steps)",
                 calls_per_step=calls),
        BenchRow("cache-t1", "cache", s, CacheConfig("inner", c, 3),
                 f"Table 1 scaled: cache inner {c} of {n}, every 3rd step", calls_per_step=calls),
        BenchRow("ilf-t1", "ilf", s_ilf, ilf, f"Table 1 scaled: ILF loop {b}..{e}, {s_ilf} steps, feedback outer:{k}",
                 calls_per_step=calls),
    ]
    dbcache = _peer_row("dbcache-t1", s, "dbcache", {"compute_steps": compute},
                        f"peer: cache-dit DBCache F1B0, {compute} of {s} steps (ILF's budget)")
    rows.append(dataclasses.replace(dbcache, calls_per_step=calls))
    return {r.name: r for r in rows}


def select_rows(spec: str | list[str] | None, rows: dict[str, BenchRow] | None = None) -> list[BenchRow]:
    """Rows by name ("all", a comma-separated list, or a list) from `rows` (default `ROWS`); the reference baseline
    (the first of `rows`) is always included first."""
    rows = ROWS if rows is None else rows
    reference = REFERENCE_ROW if rows is ROWS else next(iter(rows))
    if spec is None or spec == "all":
        names = list(DEFAULT_ROWS) if rows is ROWS else list(rows)
    else:
        names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    bad = [n for n in names if n not in rows]
    if bad or not names:
        raise ILFConfigError("rows", ",".join(bad) or spec, f"'all' or a comma-separated subset of {list(rows)}")
    names = [reference] + [n for n in dict.fromkeys(names) if n != reference]
    return [rows[n] for n in names]
