"""Interleaved timing of whole sampling runs on the real architectures (random weights), and the CSV.

Every row runs once as warm-up (excluded; its block forwards are counted there with `count_block_forwards`),
then `repeats` timed rounds run every row once each, alternating the order each round (baseline, methods,
..., methods, baseline), all in one process on one model, so that load and clock drift hit every row alike.
speedup_measured = reference median / row median, speedup_blocks = reference blocks / row blocks,
efficiency = speedup_measured / speedup_blocks (1.0: time is exactly proportional to block forwards).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..accounting import count_block_forwards, expected_block_forwards
from ..attach import get_attachment, remove
from ..errors import ILFConfigError
from ..io import atomic_path
from ..harness.provenance import device_name, git_commit, package_versions
from ..registry import dpm_solver_pp, get_backbone
from .loop import make_inputs, sample
from .rows import REFERENCE_ROW, BenchRow, select_rows
from .timing import MIB, load_average, peak_memory_kind, peak_memory_mib, reset_peak_memory, summarize, timed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_RESOLUTION = 64  # px on CPU: the real 28-block architectures, a reduced image size (2 shared cores)
TIMING_SCOPE = "transformer + DPM-Solver++ scheduler loop; text encoder and VAE excluded"
CSV_COLUMNS = (  # the columns first, in its order
    "method", "steps", "block_forwards_analytic", "block_forwards_measured", "seconds_median", "seconds_min",
    "seconds_max", "speedup_measured", "speedup_blocks", "efficiency", "device", "dtype", "resolution", "batch",
    "versions", "command",
    "peak_memory_mib", "peak_memory_vs_reference_mib", "weights_mib", "peak_memory_kind",
    "row", "label", "backbone", "compiled", "repeats", "guidance_scale", "text_tokens", "timing_scope",
    "attention", "efficiency_min", "seconds_all", "load_average", "git_commit",
)


@dataclass
class BenchSettings:
    """What `ilf bench` runs (defaults: PixArt-alpha 1024 architecture, every row, eager)."""

    backbone: str = "pixart-alpha-1024"
    device: str = "cpu"
    dtype: str = "bf16"  # fp32 | bf16 | fp16
    resolution: int | None = None  # px; None: the backbone's own on a GPU, CPU_RESOLUTION on a CPU
    batch: int = 1  # images per sampling run (the transformer sees 2x with classifier-free guidance)
    guidance_scale: float = 4.5  # > 1: classifier-free guidance batch, as the pipelines
    repeats: int = 3
    rows: Any = "all"
    compile: bool = False  # also time every row with torch.compile'd blocks (regional compilation)
    compile_backend: str = "inductor"
    compile_mode: str = "blocks"  # blocks: each block compiled in place; model: torch.compile(whole attached transformer)
    text_tokens: int | None = None  # caption tokens; None: the backbone's max_sequence_length (120 / 300)
    seed: int = 0
    threads: int | None = None  # torch CPU threads
    command: str = ""
    rows_list: list[BenchRow] = field(default_factory=list, init=False)

    def validate(self) -> "BenchSettings":
        get_backbone(self.backbone)
        if self.dtype not in DTYPES:
            raise ILFConfigError("dtype", self.dtype, tuple(DTYPES))
        if self.resolution is not None and (self.resolution < 16 or self.resolution % 16):
            raise ILFConfigError("resolution", self.resolution, "a multiple of 16 px (VAE factor 8 x patch 2)")
        for name in ("batch", "repeats"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ILFConfigError(name, v, "an integer >= 1")
        if self.compile_mode not in ("blocks", "model"):
            raise ILFConfigError("compile_mode", self.compile_mode, ("blocks", "model"))
        self.rows_list = select_rows(self.rows)
        return self

    def resolved_resolution(self) -> int:
        if self.resolution is not None:
            return self.resolution
        return get_backbone(self.backbone).resolution if torch.device(self.device).type == "cuda" else CPU_RESOLUTION


def build_model(backbone: str, resolution: int, device: Any, dtype: torch.dtype) -> nn.Module:
    """The real architecture with random weights; below its native size the positional table is made for
    `resolution` (the stock model would recompute it every step), every block is unchanged."""
    import diffusers

    spec = get_backbone(backbone)
    cfg = dict(spec.transformer_config)
    if resolution != spec.resolution:
        if spec.transformer_class == "PixArtTransformer2DModel" and cfg.get("use_additional_conditions") is None:
            cfg["use_additional_conditions"] = cfg["sample_size"] == 128  # keep the real model's conditioning
        cfg["sample_size"] = resolution // 8
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(diffusers, spec.transformer_class).from_config(cfg)
    nn.Module.to(model, dtype)  # every parameter in `dtype` (diffusers' `.to` only adds a keep-in-fp32 warning)
    return model.eval().requires_grad_(False)


def _compile_blocks(model: nn.Module, backend: str) -> None:
    """Regional compilation: every block compiled in place; the method's loop stays Python (no recompiles)."""
    for block in model.transformer_blocks:
        block.compile(backend=backend, dynamic=False)


class _Runner:
    """Attaches a row's method, runs one sampling run, detaches; keeps the compiled feedback blocks."""

    def __init__(self, model: nn.Module, settings: BenchSettings, device: torch.device, inputs: Any):
        self.model, self.settings, self.device, self.inputs = model, settings, device, inputs
        self.scheduler = dpm_solver_pp()
        self.compiled = False
        self.whole: nn.Module | None = None  # compile_mode "model": torch.compile(model), the method attached inside
        self._feedback: dict[str, nn.Module] = {}

    def run(self, row: BenchRow, count: bool = False) -> tuple[float, int | None, float | None, torch.Tensor]:
        model = self.model
        row.attach(model, self.scheduler)
        net = self.whole if self.whole is not None else model
        if self.compiled and self.whole is None and row.method == "ilf":  # the copy of a compiled block e must not call block e
            if row.name not in self._feedback:
                fb = model.ilf_feedback
                fb._compiled_call_impl = None
                fb.compile(backend=self.settings.compile_backend, dynamic=False)
                self._feedback[row.name] = fb
            get_attachment(model).feedback = self._feedback[row.name]  # owned by the method, not registered
        try:
            reset_peak_memory(self.device)
            with torch.no_grad():
                if count:
                    with count_block_forwards(model) as counter:
                        seconds, out = timed(lambda: sample(net, self.scheduler, self.inputs, row.steps), self.device)
                    n = counter.count
                else:
                    seconds, out = timed(lambda: sample(net, self.scheduler, self.inputs, row.steps), self.device)
                    n = None
            peak = peak_memory_mib(self.device)
        finally:
            remove(model)
        return seconds, n, peak, out


def _order(rows: list[BenchRow], round_index: int) -> list[BenchRow]:
    return rows if round_index % 2 == 0 else rows[::-1]


def run_bench(settings: BenchSettings, build: Callable[..., nn.Module] | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Time every row (eager, and compiled with `settings.compile`); one record per row and mode."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    resolution = settings.resolved_resolution()
    spec = get_backbone(settings.backbone)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    model = (build or build_model)(settings.backbone, resolution, device, dtype)
    num_blocks = len(model.transformer_blocks)
    text_tokens = settings.text_tokens or spec.max_sequence_length
    inputs = make_inputs(model, settings.batch, resolution, settings.guidance_scale, settings.seed, text_tokens,
                         device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    attention = type(model.transformer_blocks[0].attn1.processor).__name__  # AttnProcessor2_0 = PyTorch SDPA
    runner = _Runner(model, settings, device, inputs)
    rows = settings.rows_list
    modes = [False, True] if settings.compile else [False]
    records: list[dict[str, Any]] = []
    total = len(modes) * len(rows) * (1 + settings.repeats)
    bar = tqdm(total=total, desc="ilf bench", disable=not progress, unit="run")
    counts: dict[str, int] = {}
    for compiled in modes:
        if compiled and settings.compile_mode == "model":  # host logic stays out of the graph (ilf.attach)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * len(rows))
            runner.whole = torch.compile(model, backend=settings.compile_backend, dynamic=False)
            runner.compiled = True
        elif compiled:
            _compile_blocks(model, settings.compile_backend)
            runner.compiled = True
        seconds: dict[str, list[float]] = {r.name: [] for r in rows}
        peaks: dict[str, list[float]] = {r.name: [] for r in rows}
        for row in rows:  # warm-up: excluded from timing; counts block forwards (eager: hooks would recompile)
            _, n, _, out = runner.run(row, count=not compiled)
            if n is not None:
                counts[row.name] = n
            if not torch.isfinite(out).all():
                tqdm.write(f"warning: {row.name}: non-finite latents (random weights); timing is unaffected")
            bar.update(1)
        for r in range(settings.repeats):
            for row in _order(rows, r):
                s, _, peak, _ = runner.run(row)
                seconds[row.name].append(s)
                if peak is not None:
                    peaks[row.name].append(peak)
                bar.update(1)
        records += [{**rec, "attention": attention} for rec in _records(
            settings, rows, seconds, peaks, counts, num_blocks, resolution, text_tokens, weights, compiled, device)]
    bar.close()
    return records


def _records(settings, rows, seconds, peaks, counts, num_blocks, resolution, text_tokens, weights, compiled,
             device) -> list[dict[str, Any]]:
    ref_stats = summarize(seconds[REFERENCE_ROW])
    ref, ref_min = ref_stats["seconds_median"], ref_stats["seconds_min"]
    ref_blocks = counts[REFERENCE_ROW]
    ref_peak = max(peaks[REFERENCE_ROW]) if peaks[REFERENCE_ROW] else None
    out = []
    for row in rows:
        stats = summarize(seconds[row.name])
        analytic = expected_block_forwards(row.config, num_blocks, row.steps)
        measured = counts[row.name]
        speed = ref / stats["seconds_median"]
        blocks = ref_blocks / measured
        peak = max(peaks[row.name]) if peaks[row.name] and not compiled else None
        out.append({
            "method": row.method, "steps": row.steps, "block_forwards_analytic": analytic,
            "block_forwards_measured": measured, **stats, "speedup_measured": speed, "speedup_blocks": blocks,
            "efficiency": speed / blocks, "efficiency_min": ref_min / stats["seconds_min"] / blocks, "device": device_name(device), "dtype": settings.dtype,
            "resolution": resolution, "batch": settings.batch,
            "versions": " ".join(f"{k}={v}" for k, v in sorted(package_versions().items())),
            "command": settings.command,
            "peak_memory_mib": peak,
            "peak_memory_vs_reference_mib": (peak - ref_peak) if peak is not None and ref_peak is not None else None,
            "weights_mib": weights, "peak_memory_kind": peak_memory_kind(device) if peak is not None else "not measured (compiled)",
            "row": row.name, "label": row.label, "backbone": settings.backbone, "compiled": compiled,
            "repeats": settings.repeats, "guidance_scale": settings.guidance_scale, "text_tokens": text_tokens,
            "timing_scope": TIMING_SCOPE, "seconds_all": " ".join(f"{s:.4f}" for s in seconds[row.name]),
            "load_average": load_average(), "git_commit": git_commit(),
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
    """The printed table: one line per row and mode."""
    head = (f"{'row':14s} {'mode':8s} {'steps':>5s} {'blocks':>7s} {'counted':>7s} {'median s':>9s} {'min s':>8s} "
            f"{'max s':>8s} {'speedup':>7s} {'blk-spd':>7s} {'effic.':>6s} {'eff-min':>6s} {'peak MiB':>9s} {'d MiB':>7s}  label")
    lines = [head, "-" * len(head)]
    for r in records:
        peak = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        delta = "-" if r["peak_memory_vs_reference_mib"] is None else f"{r['peak_memory_vs_reference_mib']:+.0f}"
        lines.append(
            f"{r['row']:14s} {'compiled' if r['compiled'] else 'eager':8s} {r['steps']:5d} "
            f"{str(r['block_forwards_analytic']):>7s} {r['block_forwards_measured']:7d} {r['seconds_median']:9.3f} "
            f"{r['seconds_min']:8.3f} {r['seconds_max']:8.3f} {r['speedup_measured']:7.3f} {r['speedup_blocks']:7.3f} "
            f"{r['efficiency']:6.3f} {r['efficiency_min']:6.3f} {peak:>9s} {delta:>7s}  {r['label']}")
    return "\n".join(lines)
