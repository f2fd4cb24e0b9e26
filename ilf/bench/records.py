"""One benchmark record per row and variant: the CSV columns, the record, the CSV file and the printed table."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness.provenance import device_name, git_commit, package_versions
from ..io import atomic_path
from ..flops import ModelFlops
from .rows import BenchRow
from .settings import TIMING_SCOPE, BenchSettings
from .timing import load_average, peak_memory_kind, summarize

CSV_COLUMNS = (  # the core columns first
    "method", "steps", "block_forwards_analytic", "block_forwards_measured", "seconds_median", "seconds_min",
    "seconds_max", "speedup_measured", "speedup_blocks", "efficiency", "device", "dtype", "resolution", "batch",
    "versions", "command",
    "peak_memory_mib", "peak_memory_vs_reference_mib", "weights_mib", "peak_memory_kind",
    "row", "label", "backbone", "compiled", "repeats", "guidance_scale", "text_tokens", "timing_scope",
    "attention", "efficiency_min", "seconds_all", "load_average", "git_commit",
    "width", "frames", "calls_per_step",  # frame width px, video frames (1 for images), transformer calls per step
    # speed toward the hardware limit
    "compile", "compile_mode", "compile_backend", "sdpa_backend", "fuse_qkv", "attention_ops",
    "flops_per_block_forward", "flops_analytic", "flops_measured", "flops_per_image", "speedup_flops",
    "tflops_achieved", "seconds_per_block_forward",
    "speedup_vs_eager_reference", "rel_diff_vs_eager", "graphs_compiled", "recompiles_timed",
    # where a row's time goes beyond its block forwards (one profiled, untimed run): host ops dispatched and,
    # on a GPU, the device's kernel time (busy fraction = kernel seconds / median seconds)
    "host_ops", "host_ops_per_block_forward", "device_kernel_seconds", "device_busy_fraction", "error",
)


def method_overhead_us(records: list[dict[str, Any]], num_blocks: int) -> dict[str, float]:
    """Per row of a `no_blocks` run: (row min - baseline-20 min x steps / 20) / (num_blocks x steps), in
    microseconds: the method's own time per block slot beyond the plain loop's (0 for the baselines). Fastest
    runs (min), the robust estimate on a shared machine."""
    ref = records[0]  # the reference row (`baseline-20`)
    per_step = ref["seconds_min"] / ref["steps"]
    return {r["row"]: (r["seconds_min"] - per_step * r["steps"]) / (num_blocks * r["steps"]) * 1e6
            for r in records}


_NAN_STATS = {"seconds_median": float("nan"), "seconds_min": float("nan"), "seconds_max": float("nan")}


@dataclass
class RowTiming:
    """What one row measured in one variant (compile scope x SDPA backend)."""

    row: BenchRow
    block_forwards: int | None = None  # counted in the reference pass; None: the row failed eager
    flops_per_image: int | None = None  # analytic from the reference pass's counted calls (`ilf.flops`)
    seconds: list[float] = field(default_factory=list)  # timed rounds
    peaks: list[float] = field(default_factory=list)  # peak memory per timed round, MiB
    rel_diff: float | None = None  # warm-up output vs the eager reference output
    graphs: int = 0  # graphs compiled in the warm-up
    recompiles: int = 0  # graphs compiled during the timed rounds (0 when the compile is stable)
    host_ops: int | None = None  # from one profiled run
    kernel_seconds: float | None = None  # device kernel time of that run (GPU only)
    error: str = ""


@dataclass
class Setup:
    """What every record of one `ilf bench` run shares."""

    settings: BenchSettings
    num_blocks: int
    resolution: int
    text_tokens: int
    weights_mib: float
    device: Any
    attention: str
    model_flops: ModelFlops  # FLOPs of one model call per sequence, by block (`ilf.flops`)
    sequences: int  # sequences per model call: batch x 2 with classifier-free guidance

    @property
    def flops(self) -> float:
        """FLOPs per block forward, every sequence of the call (mean over the backbone's blocks)."""
        return sum(self.model_flops.blocks) / len(self.model_flops.blocks) * self.sequences


def variant_records(timings: list[RowTiming], scope: str, sdpa: str, attention_ops: str, setup: Setup,
                    eager_ref: float | None) -> list[dict[str, Any]]:
    """One record (`CSV_COLUMNS`) per row of a variant; speedups are against the reference row's timing."""
    settings = setup.settings
    compiled = scope != "none"
    ref_t = timings[0]  # the reference row (`baseline-20`; a flow-matching backbone's `baseline-S`)
    stats_of = {t.row.name: summarize(t.seconds) if t.seconds else dict(_NAN_STATS) for t in timings}
    ref, ref_min = stats_of[ref_t.row.name]["seconds_median"], stats_of[ref_t.row.name]["seconds_min"]
    ref_peak = max(ref_t.peaks) if ref_t.peaks else None
    nan = float("nan")
    out = []
    for t in timings:
        row, stats, measured = t.row, stats_of[t.row.name], t.block_forwards
        analytic = row.block_forwards_analytic(setup.num_blocks)
        speed = ref / stats["seconds_median"]
        blocks = ref_t.block_forwards / measured if measured else nan
        flops_measured = t.flops_per_image * setup.sequences if t.flops_per_image else None
        flops_analytic = row.flops_analytic(setup.model_flops)
        peak = max(t.peaks) if t.peaks and not compiled else None
        out.append({
            "method": row.method, "steps": row.steps, "block_forwards_analytic": analytic,
            "block_forwards_measured": measured, **stats, "speedup_measured": speed, "speedup_blocks": blocks,
            "efficiency": speed / blocks, "efficiency_min": ref_min / stats["seconds_min"] / blocks,
            "device": device_name(setup.device), "dtype": settings.dtype, "resolution": setup.resolution,
            "batch": settings.batch, "versions": " ".join(f"{k}={v}" for k, v in sorted(package_versions().items())),
            "command": settings.command,
            "peak_memory_mib": peak,
            "peak_memory_vs_reference_mib": (peak - ref_peak) if peak is not None and ref_peak is not None else None,
            "weights_mib": setup.weights_mib,
            "peak_memory_kind": peak_memory_kind(setup.device) if peak is not None else "not measured (compiled)",
            "row": row.name, "label": row.label, "backbone": settings.backbone, "compiled": compiled,
            "repeats": settings.repeats, "guidance_scale": settings.resolved_guidance(), "text_tokens": setup.text_tokens,
            "timing_scope": TIMING_SCOPE, "width": settings.resolved_width(), "frames": settings.resolved_frames(),
            "calls_per_step": row.calls_per_step, "seconds_all": " ".join(f"{s:.4f}" for s in t.seconds),
            "load_average": load_average(), "git_commit": git_commit(), "attention": setup.attention,
            "compile": scope, "compile_mode": settings.compile_mode if compiled else "",
            "compile_backend": settings.compile_backend if compiled else "", "sdpa_backend": sdpa,
            "fuse_qkv": settings.fuse_qkv, "attention_ops": attention_ops,
            "flops_per_block_forward": setup.flops,
            "flops_analytic": flops_analytic * setup.sequences if isinstance(flops_analytic, int) else None,
            "flops_measured": flops_measured, "flops_per_image": t.flops_per_image,
            "speedup_flops": ref_t.flops_per_image / t.flops_per_image
            if t.flops_per_image and ref_t.flops_per_image else nan,
            "tflops_achieved": flops_measured / stats["seconds_median"] / 1e12 if flops_measured else nan,
            "seconds_per_block_forward": stats["seconds_median"] / measured if measured else nan,
            "speedup_vs_eager_reference": (eager_ref / stats["seconds_median"]) if eager_ref else None,
            "rel_diff_vs_eager": t.rel_diff,
            "graphs_compiled": t.graphs if compiled else None,
            "recompiles_timed": t.recompiles if compiled else None,
            "host_ops": t.host_ops,
            "host_ops_per_block_forward": t.host_ops / measured if t.host_ops is not None and measured else None,
            "device_kernel_seconds": t.kernel_seconds,
            "device_busy_fraction": t.kernel_seconds / stats["seconds_median"] if t.kernel_seconds is not None else None,
            "error": t.error,
        })
    return out


def write_csv(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """The benchmark CSV (columns `CSV_COLUMNS`), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for rec in records:
            writer.writerow({k: _fmt(rec.get(k)) for k in CSV_COLUMNS})
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def format_table(records: list[dict[str, Any]]) -> str:
    """The printed table: one line per row and variant (compile scope / SDPA backend)."""
    head = (f"{'row':14s} {'variant':18s} {'steps':>5s} {'blocks':>7s} {'counted':>7s} {'median s':>9s} {'min s':>8s} "
            f"{'max s':>8s} {'speedup':>7s} {'blk-spd':>7s} {'flop-spd':>8s} {'effic.':>6s} {'eff-min':>7s} {'TFLOP/s':>7s} "
            f"{'vs eager':>8s} {'rel diff':>8s} {'peak MiB':>9s} {'d MiB':>7s}  label / error")
    lines = [head, "-" * len(head)]
    for r in records:
        peak = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        delta = "-" if r["peak_memory_vs_reference_mib"] is None else f"{r['peak_memory_vs_reference_mib']:+.0f}"
        vs = r.get("speedup_vs_eager_reference")
        diff = r.get("rel_diff_vs_eager")
        variant = f"{r['compile']}/{r['sdpa_backend']}"
        lines.append(
            f"{r['row']:14s} {variant:18s} {r['steps']:5d} "
            f"{str(r['block_forwards_analytic']):>7s} {str(r['block_forwards_measured']):>7s} {r['seconds_median']:9.3f} "
            f"{r['seconds_min']:8.3f} {r['seconds_max']:8.3f} {r['speedup_measured']:7.3f} {r['speedup_blocks']:7.3f} "
            f"{r['speedup_flops']:8.3f} {r['efficiency']:6.3f} {r['efficiency_min']:7.3f} {r['tflops_achieved']:7.1f} "
            f"{'-' if vs is None else f'{vs:.3f}':>8s} {'-' if diff is None else f'{diff:.1e}':>8s} {peak:>9s} {delta:>7s}"
            f"  {r['error'] or r['label']}")
    return "\n".join(lines)
