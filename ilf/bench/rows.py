"""The benchmark rows: the paper's baselines, cache and ILF rows (Tables 1, 3, 4) and peer methods.

Block indices are the paper's (28-block backbones). Speedups are against `baseline-20`, the paper's
reference (Table 1: 560 block forwards). Peer rows are labelled `peer:` and counted only at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..attach import apply_cache, apply_feedback
from ..config import CacheConfig, FeedbackConfig
from ..errors import ILFConfigError
from ..peers import FirstBlockCacheConfig, apply_peer

REFERENCE_ROW = "baseline-20"


@dataclass(frozen=True)
class BenchRow:
    """One row: a method, its config and its number of sampling steps."""

    name: str
    method: str  # baseline | cache | ilf | fbcache
    steps: int
    config: Any = None  # None | CacheConfig | FeedbackConfig | FirstBlockCacheConfig
    label: str = ""

    def attach(self, model: nn.Module, scheduler: Any) -> nn.Module:
        """Attach this row's method through the public API (nothing for a baseline)."""
        apply: Callable | None = {"baseline": None, "cache": apply_cache, "ilf": apply_feedback,
                                  "fbcache": apply_peer}[self.method]
        return model if apply is None else apply(model, self.config, scheduler=scheduler)


def _fb(threshold: float) -> FirstBlockCacheConfig:
    return FirstBlockCacheConfig(threshold=threshold)  # diffusers' FirstBlockCache (ilf.peers)


ROWS: dict[str, BenchRow] = {r.name: r for r in [
    BenchRow("baseline-20", "baseline", 20, None, "Table 1: 20-step baseline"),
    BenchRow("baseline-12", "baseline", 12, None, "Table 1: 12-step baseline"),
    BenchRow("cache-t1", "cache", 20, CacheConfig("inner", 18, 3), "Table 1: cache inner 18, every 3rd step"),
    BenchRow("cache-t4", "cache", 20, CacheConfig("inner", 18, 2), "Table 4: cache inner 18, every 2nd step"),
    BenchRow("ilf-t1", "ilf", 10, FeedbackConfig(8, 19, "outer:4"), "Table 1: ILF loop 8..19, feedback steps 0,1,8,9"),
    BenchRow("ilf-t4", "ilf", 12, FeedbackConfig(8, 19, "outer:4"), "Table 4: ILF loop 8..19, feedback steps 0,1,10,11"),
    BenchRow("ilf-t3-small", "ilf", 12, FeedbackConfig(0, 5, "all"), "Table 3: ILF loop 0..5, feedback every step"),
    BenchRow("fbcache-0.05", "fbcache", 20, _fb(0.05), "peer: diffusers FirstBlockCache, threshold 0.05 (dynamic)"),
    BenchRow("fbcache-0.2", "fbcache", 20, _fb(0.2), "peer: diffusers FirstBlockCache, threshold 0.2 (dynamic)"),
]}
DEFAULT_ROWS: tuple[str, ...] = tuple(ROWS)


def select_rows(spec: str | list[str] | None) -> list[BenchRow]:
    """Rows by name ("all", a comma-separated list, or a list); the reference baseline is always included first."""
    if spec is None or spec == "all":
        names = list(DEFAULT_ROWS)
    else:
        names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    bad = [n for n in names if n not in ROWS]
    if bad or not names:
        raise ILFConfigError("rows", ",".join(bad) or spec, f"'all' or a comma-separated subset of {list(ROWS)}")
    names = [REFERENCE_ROW] + [n for n in dict.fromkeys(names) if n != REFERENCE_ROW]
    return [ROWS[n] for n in names]
