"""Interleaved timing of whole sampling runs on the real architectures (random weights), and the CSV.

A reference pass runs every row once eager with PyTorch's default attention (excluded from timing): it
counts block forwards with `count_block_forwards` and keeps each row's output latents. Then, for every
speed variant (compile scope x SDPA backend, see `speed.py`), every row runs once as warm-up (excluded;
compiles; its output is compared with the reference: `rel_diff_vs_eager`) and `repeats` timed rounds run
every row once each, alternating the order each round (baseline, methods, ..., methods, baseline), all in
one process on one model, so that load and clock drift hit every row alike. Within a variant:
speedup_measured = reference-row median / row median, speedup_blocks = reference blocks / row blocks,
efficiency = speedup_measured / speedup_blocks (1.0: time is exactly proportional to block forwards), and
tflops_achieved = block forwards x FLOPs per block forward (`flops.py`) / median seconds.
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

from ..accounting import count_block_forwards
from ..attach import get_attachment
from ..errors import ILFConfigError
from ..io import atomic_path
from ..harness.provenance import device_name, git_commit, package_versions
from ..registry import dpm_solver_pp, get_backbone
from .flops import block_flops
from .loop import make_inputs, sample
from .rows import REFERENCE_ROW, BenchRow, select_rows
from .speed import (COMPILE_MODES, COMPILE_SCOPES, SDPA_BACKENDS, attention_ops, compile_kwargs, compile_model,
                    host_and_device_work, parse_list, rel_diff, sdpa_backend, uncompile, unique_graphs, uses_cuda_graphs)
from .timing import MIB, load_average, peak_memory_kind, peak_memory_mib, reset_peak_memory, summarize, timed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_RESOLUTION = 64  # px on CPU: the real 28-block architectures, a reduced image size (2 shared cores)
TIMING_SCOPE = "transformer + DPM-Solver++ scheduler loop; text encoder and VAE excluded"
CSV_COLUMNS = (  # the issue's columns first, in its order
    "method", "steps", "block_forwards_analytic", "block_forwards_measured", "seconds_median", "seconds_min",
    "seconds_max", "speedup_measured", "speedup_blocks", "efficiency", "device", "dtype", "resolution", "batch",
    "versions", "command",
    "peak_memory_mib", "peak_memory_vs_reference_mib", "weights_mib", "peak_memory_kind",
    "row", "label", "backbone", "compiled", "repeats", "guidance_scale", "text_tokens", "timing_scope",
    "attention", "efficiency_min", "seconds_all", "load_average", "git_commit",
    # speed toward the hardware limit (issue 14)
    "compile", "compile_mode", "compile_backend", "sdpa_backend", "fuse_qkv", "attention_ops",
    "flops_per_block_forward", "flops_analytic", "flops_measured", "tflops_achieved", "seconds_per_block_forward",
    "speedup_vs_eager_reference", "rel_diff_vs_eager", "graphs_compiled", "recompiles_timed",
    # where a row's time goes beyond its block forwards (one profiled, untimed run): host ops dispatched and,
    # on a GPU, the device's kernel time (busy fraction = kernel seconds / median seconds)
    "host_ops", "host_ops_per_block_forward", "device_kernel_seconds", "device_busy_fraction", "error",
)


@dataclass
class BenchSettings:
    """What `ilf bench` runs (defaults: PixArt-alpha 1024 architecture, every row, eager, default SDPA).

    `compile` and `sdpa` are comma-separated lists; every combination (compile scope x SDPA backend) is
    one variant, timed in that order. `compile=True` means "none,regional" (eager, then regional).
    """

    backbone: str = "pixart-alpha-1024"
    device: str = "cpu"
    dtype: str = "bf16"  # fp32 | bf16 | fp16
    resolution: int | None = None  # px; None: the backbone's own on a GPU, CPU_RESOLUTION on a CPU
    batch: int = 1  # images per sampling run (the transformer sees 2x with classifier-free guidance)
    guidance_scale: float = 4.5  # > 1: classifier-free guidance batch, as the pipelines
    repeats: int = 3
    rows: Any = "all"
    compile: Any = "none"  # none | regional | whole, comma-separated (True: "none,regional")
    compile_mode: str = "default"  # torch.compile mode (speed.COMPILE_MODES)
    compile_backend: str = "inductor"
    sdpa: Any = "default"  # default | flash | cudnn | efficient | math, comma-separated
    fuse_qkv: bool = False  # diffusers' fuse_qkv_projections (one QKV / KV GEMM per attention)
    tiny: bool = False  # plumbing test only: the backbone's class and 28 blocks at width 24 (TINY_WIDTH)
    no_blocks: bool = False  # method-overhead probe: every block replaced by an identity (`IdentityBlock`)
    text_tokens: int | None = None  # caption tokens; None: the backbone's max_sequence_length (120 / 300)
    seed: int = 0
    threads: int | None = None  # torch CPU threads
    command: str = ""
    rows_list: list[BenchRow] = field(default_factory=list, init=False)
    variants: list[tuple[str, str]] = field(default_factory=list, init=False)  # (compile scope, sdpa backend)

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
        if self.compile_mode not in COMPILE_MODES:
            raise ILFConfigError("compile_mode", self.compile_mode, COMPILE_MODES)
        compile_spec = {True: "none,regional", False: "none"}.get(self.compile, self.compile) \
            if isinstance(self.compile, bool) else self.compile
        scopes = parse_list(compile_spec, COMPILE_SCOPES, "compile")
        backends = parse_list(self.sdpa, SDPA_BACKENDS, "sdpa")
        self.variants = [(c, b) for c in scopes for b in backends]
        self.rows_list = select_rows(self.rows)
        return self

    def resolved_resolution(self) -> int:
        if self.resolution is not None:
            return self.resolution
        return get_backbone(self.backbone).resolution if torch.device(self.device).type == "cuda" else CPU_RESOLUTION


class IdentityBlock(nn.Module):
    """A block that returns its input: with every block replaced, a sampling run times only what is not a block
    (the method's own loop, residual adds, patch embedding, head, scheduler). Keeps the block's `norm1`
    (DiT's head embeds the timestep with block 0's)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        if hasattr(block, "norm1"):
            self.norm1 = block.norm1
        ref = next(block.parameters())  # ILF places its scales on a block parameter's device
        self.anchor = nn.Parameter(torch.zeros(0, device=ref.device, dtype=ref.dtype), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def method_overhead_us(records: list[dict[str, Any]], num_blocks: int) -> dict[str, float]:
    """Per row of a `no_blocks` run: (row min - baseline-20 min x steps / 20) / (num_blocks x steps), in
    microseconds: the method's own time per block slot beyond the plain loop's (0 for the baselines). Fastest
    runs (min), the robust estimate on a shared machine."""
    ref = next(r for r in records if r["row"] == REFERENCE_ROW)
    per_step = ref["seconds_min"] / ref["steps"]
    return {r["row"]: (r["seconds_min"] - per_step * r["steps"]) / (num_blocks * r["steps"]) * 1e6
            for r in records}


TINY_WIDTH = dict(attention_head_dim=8, num_attention_heads=3)  # `tiny`: D = 24 (PixArt's size embedder: D % 3 == 0)


def build_model(backbone: str, resolution: int, device: Any, dtype: torch.dtype, tiny: bool = False) -> nn.Module:
    """The real architecture with random weights; below its native size the positional table is made for
    `resolution` (the stock model would recompute it every step), every block is unchanged. `tiny` shrinks
    the width to 24 (a plumbing test of the benchmark, not a measurement of the architecture)."""
    import diffusers

    spec = get_backbone(backbone)
    cfg = dict(spec.transformer_config)
    if tiny:
        cfg.update(TINY_WIDTH)
        if "cross_attention_dim" in cfg:
            cfg.update(cross_attention_dim=24, caption_channels=16)
    if resolution != spec.resolution:
        if spec.transformer_class == "PixArtTransformer2DModel" and cfg.get("use_additional_conditions") is None:
            cfg["use_additional_conditions"] = cfg["sample_size"] == 128  # keep the real model's conditioning
        cfg["sample_size"] = resolution // 8
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(diffusers, spec.transformer_class).from_config(cfg)
    nn.Module.to(model, dtype)  # every parameter in `dtype` (diffusers' `.to` only adds a keep-in-fp32 warning)
    return model.eval().requires_grad_(False)


class _Runner:
    """Attaches a row's method, runs one sampling run, detaches; keeps the compiled feedback blocks."""

    def __init__(self, model: nn.Module, settings: BenchSettings, device: torch.device, inputs: Any):
        self.model, self.settings, self.device, self.inputs = model, settings, device, inputs
        self.scheduler = dpm_solver_pp()
        self.scope = "none"
        self.mark_steps = False
        self._feedback: dict[str, nn.Module] = {}

    def set_scope(self, scope: str) -> None:
        if scope != "none" or self.scope != "none":
            torch._dynamo.reset()  # no graph compiled under another SDPA backend or scope is reused
        compile_model(self.model, scope, self.settings.compile_mode, self.settings.compile_backend)
        self.scope = scope
        self.mark_steps = uses_cuda_graphs(scope, self.settings.compile_mode, self.settings.compile_backend)
        self._feedback = {}

    def sample(self, steps: int) -> torch.Tensor:
        mark = torch.compiler.cudagraph_mark_step_begin if self.mark_steps else None
        return sample(self.model, self.scheduler, self.inputs, steps, before_call=mark)

    def _attach(self, row: BenchRow) -> nn.Module:
        model = self.model
        row.attach(model, self.scheduler)
        if self.scope == "regional" and row.method == "ilf":  # a copy of compiled block e
            if row.name not in self._feedback:  # must not call block e: compile the copy on its own
                fb = model.ilf_feedback
                fb._compiled_call_impl = None
                fb.compile(**compile_kwargs(self.settings.compile_mode, self.settings.compile_backend))
                self._feedback[row.name] = fb
            get_attachment(model).feedback = self._feedback[row.name]  # owned by the method, not registered
        return model

    def work(self, row: BenchRow) -> tuple[int | None, float | None]:
        """(host ops, device kernel seconds) of one sampling run of `row` (`speed.host_and_device_work`)."""
        model = self._attach(row)
        try:
            with torch.no_grad(), row.run_context(model):
                return host_and_device_work(lambda: self.sample(row.steps), self.device)
        finally:
            row.remove(model)

    def run(self, row: BenchRow, count: bool = False) -> tuple[float, int | None, float | None, torch.Tensor]:
        model = self._attach(row)
        try:
            reset_peak_memory(self.device)
            with torch.no_grad(), row.run_context(model):
                if count:
                    with count_block_forwards(model) as counter:
                        seconds, out = timed(lambda: self.sample(row.steps), self.device)
                    n = counter.count
                else:
                    seconds, out = timed(lambda: self.sample(row.steps), self.device)
                    n = None
            peak = peak_memory_mib(self.device)
        finally:
            row.remove(model)
        return seconds, n, peak, out


def _order(rows: list[BenchRow], round_index: int) -> list[BenchRow]:
    return rows if round_index % 2 == 0 else rows[::-1]


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:300]


def run_bench(settings: BenchSettings, build: Callable[..., nn.Module] | None = None, progress: bool = True,
              on_variant: Callable[[list[dict[str, Any]]], Any] | None = None) -> list[dict[str, Any]]:
    """Time every row in every variant; one record per row and variant. `on_variant(records_so_far)` is called
    after each variant (the command writes the CSV there, so a run killed later keeps what it measured).
    A row that fails in a variant (e.g. a compile error) is recorded with its `error` and no timings."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    resolution = settings.resolved_resolution()
    spec = get_backbone(settings.backbone)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    model = build(settings.backbone, resolution, device, dtype) if build else \
        build_model(settings.backbone, resolution, device, dtype, tiny=settings.tiny)
    if settings.fuse_qkv:
        model.fuse_qkv_projections()
    num_blocks = len(model.transformer_blocks)
    text_tokens = settings.text_tokens or spec.max_sequence_length
    inputs = make_inputs(model, settings.batch, resolution, settings.guidance_scale, settings.seed, text_tokens,
                         device, dtype)
    sequences = settings.batch * (2 if settings.guidance_scale > 1 else 1)
    cross_tokens = text_tokens if "encoder_hidden_states" in inputs.cond else 0
    flops = block_flops(model.config, resolution, cross_tokens, sequences)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    attention = type(model.transformer_blocks[0].attn1.processor).__name__  # AttnProcessor2_0 = PyTorch SDPA
    if settings.no_blocks:
        model.transformer_blocks = nn.ModuleList(IdentityBlock(b) for b in model.transformer_blocks)
        attention = "none (no_blocks)"
    runner = _Runner(model, settings, device, inputs)
    rows = settings.rows_list
    total = len(rows) + len(settings.variants) * len(rows) * (1 + settings.repeats)
    bar = tqdm(total=total, desc="ilf bench", disable=not progress, unit="run")
    static = dict(settings=settings, num_blocks=num_blocks, resolution=resolution, text_tokens=text_tokens,
                  weights=weights, device=device, attention=attention, flops=flops)

    counts: dict[str, int | None] = {r.name: None for r in rows}
    reference: dict[str, torch.Tensor] = {}
    failed: dict[str, str] = {}  # rows whose method fails eager (e.g. a peer library missing): recorded, skipped
    for row in rows:  # reference pass: eager, default attention; counts block forwards, keeps outputs
        try:
            _, counts[row.name], _, out = runner.run(row, count=True)
        except Exception as err:  # noqa: BLE001
            if row.name == REFERENCE_ROW:
                raise
            failed[row.name] = _error(err)
            bar.update(1)
            continue
        reference[row.name] = out
        if not torch.isfinite(out).all():
            tqdm.write(f"warning: {row.name}: non-finite latents (random weights); timing is unaffected")
        bar.update(1)

    records: list[dict[str, Any]] = []
    eager_ref: float | None = None
    for scope, sdpa in settings.variants:
        seconds: dict[str, list[float]] = {r.name: [] for r in rows}
        peaks: dict[str, list[float]] = {r.name: [] for r in rows}
        diffs: dict[str, float] = {}
        graphs: dict[str, int] = {r.name: 0 for r in rows}
        recompiles: dict[str, int] = {r.name: 0 for r in rows}
        errors: dict[str, str] = dict(failed)
        ops = ""
        work: dict[str, tuple[int | None, float | None]] = {}
        with sdpa_backend(sdpa):
            try:
                runner.set_scope(scope)
            except Exception as err:  # noqa: BLE001 - a variant that cannot be set up is recorded, not fatal
                errors = {r.name: errors.get(r.name) or _error(err) for r in rows}
            for row in rows:  # warm-up (compiles), compared with the reference pass
                if row.name in errors:
                    bar.update(1)
                    continue
                g0 = unique_graphs()
                try:
                    _, _, _, out = runner.run(row)
                    diffs[row.name] = rel_diff(out, reference[row.name])
                except Exception as err:  # noqa: BLE001
                    errors[row.name] = _error(err)
                graphs[row.name] = unique_graphs() - g0
                bar.update(1)
            if REFERENCE_ROW not in errors:
                ops = attention_ops(lambda: runner.sample(1), device)
            for row in rows:  # one profiled run per row (not timed): host ops and device kernel time
                if row.name not in errors:
                    work[row.name] = runner.work(row)
            for r in range(settings.repeats):
                for row in _order(rows, r):
                    bar.update(1)
                    if row.name in errors:
                        continue
                    g0 = unique_graphs()
                    try:
                        s, _, peak, _ = runner.run(row)
                    except Exception as err:  # noqa: BLE001
                        errors[row.name] = _error(err)
                        continue
                    recompiles[row.name] += unique_graphs() - g0
                    seconds[row.name].append(s)
                    if peak is not None:
                        peaks[row.name].append(peak)
        variant = dict(scope=scope, sdpa=sdpa, seconds=seconds, peaks=peaks, diffs=diffs, graphs=graphs,
                       recompiles=recompiles, errors=errors, ops=ops, counts=counts, eager_ref=eager_ref, work=work)
        new = _records(rows, variant, **static)
        if scope == "none" and sdpa == "default" and eager_ref is None:
            eager_ref = next((r["seconds_median"] for r in new if r["row"] == REFERENCE_ROW
                              and not math.isnan(r["seconds_median"])), None)
            for r in new:
                r["speedup_vs_eager_reference"] = (eager_ref / r["seconds_median"]) if eager_ref else float("nan")
        records += new
        if on_variant is not None:
            on_variant(records)
    uncompile(model)
    bar.close()
    return records


_NAN_STATS = {"seconds_median": float("nan"), "seconds_min": float("nan"), "seconds_max": float("nan")}


def _records(rows, variant, settings, num_blocks, resolution, text_tokens, weights, device, attention,
             flops) -> list[dict[str, Any]]:
    seconds, peaks, counts = variant["seconds"], variant["peaks"], variant["counts"]
    compiled = variant["scope"] != "none"
    stats_of = {r.name: summarize(seconds[r.name]) if seconds[r.name] else dict(_NAN_STATS) for r in rows}
    ref_stats = stats_of[REFERENCE_ROW]
    ref, ref_min = ref_stats["seconds_median"], ref_stats["seconds_min"]
    ref_blocks = counts[REFERENCE_ROW]
    ref_peak = max(peaks[REFERENCE_ROW]) if peaks[REFERENCE_ROW] else None
    eager_ref = variant["eager_ref"]
    out = []
    for row in rows:
        stats = stats_of[row.name]
        analytic = row.block_forwards_analytic(num_blocks)
        measured = counts[row.name]  # None: the row failed eager
        host_ops, kernel = variant["work"].get(row.name, (None, None))
        speed = ref / stats["seconds_median"]
        blocks = ref_blocks / measured if measured else float("nan")
        flops_measured = measured * flops if measured else None
        nan = float("nan")
        peak = max(peaks[row.name]) if peaks[row.name] and not compiled else None
        out.append({
            "method": row.method, "steps": row.steps, "block_forwards_analytic": analytic,
            "block_forwards_measured": measured, **stats, "speedup_measured": speed, "speedup_blocks": blocks,
            "efficiency": speed / blocks, "efficiency_min": ref_min / stats["seconds_min"] / blocks,
            "device": device_name(device), "dtype": settings.dtype, "resolution": resolution, "batch": settings.batch,
            "versions": " ".join(f"{k}={v}" for k, v in sorted(package_versions().items())),
            "command": settings.command,
            "peak_memory_mib": peak,
            "peak_memory_vs_reference_mib": (peak - ref_peak) if peak is not None and ref_peak is not None else None,
            "weights_mib": weights,
            "peak_memory_kind": peak_memory_kind(device) if peak is not None else "not measured (compiled)",
            "row": row.name, "label": row.label, "backbone": settings.backbone, "compiled": compiled,
            "repeats": settings.repeats, "guidance_scale": settings.guidance_scale, "text_tokens": text_tokens,
            "timing_scope": TIMING_SCOPE, "seconds_all": " ".join(f"{s:.4f}" for s in seconds[row.name]),
            "load_average": load_average(), "git_commit": git_commit(), "attention": attention,
            "compile": variant["scope"], "compile_mode": settings.compile_mode if compiled else "",
            "compile_backend": settings.compile_backend if compiled else "", "sdpa_backend": variant["sdpa"],
            "fuse_qkv": settings.fuse_qkv, "attention_ops": variant["ops"],
            "flops_per_block_forward": flops,
            "flops_analytic": analytic * flops if isinstance(analytic, int) else None,
            "flops_measured": flops_measured,
            "tflops_achieved": flops_measured / stats["seconds_median"] / 1e12 if flops_measured else nan,
            "seconds_per_block_forward": stats["seconds_median"] / measured if measured else nan,
            "speedup_vs_eager_reference": (eager_ref / stats["seconds_median"]) if eager_ref else None,
            "rel_diff_vs_eager": variant["diffs"].get(row.name),
            "graphs_compiled": variant["graphs"][row.name] if compiled else None,
            "recompiles_timed": variant["recompiles"][row.name] if compiled else None,
            "host_ops": host_ops,
            "host_ops_per_block_forward": host_ops / measured if host_ops is not None and measured else None,
            "device_kernel_seconds": kernel,
            "device_busy_fraction": kernel / stats["seconds_median"] if kernel is not None else None,
            "error": variant["errors"].get(row.name, ""),
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
            f"{'max s':>8s} {'speedup':>7s} {'blk-spd':>7s} {'effic.':>6s} {'eff-min':>7s} {'TFLOP/s':>7s} "
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
            f"{r['efficiency']:6.3f} {r['efficiency_min']:7.3f} {r['tflops_achieved']:7.1f} "
            f"{'-' if vs is None else f'{vs:.3f}':>8s} {'-' if diff is None else f'{diff:.1e}':>8s} {peak:>9s} {delta:>7s}"
            f"  {r['error'] or r['label']}")
    return "\n".join(lines)
