"""Interleaved timing of whole sampling runs on the real architectures (random weights).

A reference pass runs every row once eager with PyTorch's default attention (excluded from timing): it
counts block forwards with `count_block_forwards` and keeps each row's output latents. Then, for every
speed variant (compile scope x SDPA backend, see `speed.py`), every row runs once as warm-up (excluded;
compiles; its output is compared with the reference: `rel_diff_vs_eager`) and `repeats` timed rounds run
every row once each, alternating the order each round (baseline, methods, ..., methods, baseline), all in
one process on one model, so that load and clock drift hit every row alike. Within a variant:
speedup_measured = reference-row median / row median, speedup_blocks = reference blocks / row blocks,
efficiency = speedup_measured / speedup_blocks (1.0: time is exactly proportional to block forwards),
speedup_flops = reference FLOPs per image / row FLOPs per image (analytic from the counted calls, `ilf.flops`),
and tflops_achieved = the run's FLOPs (every sequence of the batch) / median seconds.

    settings.py  what runs (`BenchSettings`)        models.py   the architectures with random weights
    run.py       the passes (this file)             records.py  the records, the CSV and the printed table
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..accounting import count_block_forwards
from ..feedback import set_feedback_block
from ..adapters import model_blocks
from ..registry import dpm_solver_pp, get_backbone
from ..config import FeedbackConfig
from ..flops import ModelFlops, call_tokens, count_model_calls, model_flops
from .inputs import make_flow_inputs, scheduler_for
from .loop import make_inputs, sample
from .models import IdentityBlock, build_model
from .records import (CSV_COLUMNS, RowTiming, Setup, format_table, method_overhead_us, variant_records,  # noqa: F401
                      write_csv)
from .rows import BenchRow
from .settings import DTYPES, TIMING_SCOPE, BenchSettings  # noqa: F401 (public names of `ilf.bench.run`)
from .speed import (attention_ops, compile_kwargs, compile_model, host_and_device_work, rel_diff, sdpa_backend,
                    uncompile, unique_graphs, uses_cuda_graphs)
from .timing import MIB, peak_memory_mib, reset_peak_memory, timed


class _Runner:
    """Attaches a row's method, runs one sampling run, detaches; keeps the compiled feedback blocks."""

    def __init__(self, model: nn.Module, settings: BenchSettings, device: torch.device, inputs: Any):
        self.model, self.settings, self.device, self.inputs = model, settings, device, inputs
        spec = get_backbone(settings.backbone)
        self.scheduler = scheduler_for(spec) if settings.family else dpm_solver_pp()
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
            set_feedback_block(model, self._feedback[row.name])  # owned by the method, not registered
        return model

    def work(self, row: BenchRow) -> tuple[int | None, float | None]:
        """(host ops, device kernel seconds) of one sampling run of `row` (`speed.host_and_device_work`)."""
        model = self._attach(row)
        try:
            with torch.no_grad(), row.run_context(model):
                return host_and_device_work(lambda: self.sample(row.steps), self.device)
        finally:
            row.remove(model)

    def run(self, row: BenchRow, count: ModelFlops | None = None) -> tuple[float, tuple[int, int] | None,
                                                                           float | None, torch.Tensor]:
        """One timed sampling run: (seconds, (block forwards, FLOPs per image) when `count` is the model's
        `ModelFlops`, peak memory, output latents)."""
        model = self._attach(row)
        try:
            reset_peak_memory(self.device)
            with torch.no_grad(), row.run_context(model):
                if count is not None:
                    with count_block_forwards(model) as counter, count_model_calls(model) as calls:
                        seconds, out = timed(lambda: self.sample(row.steps), self.device)
                    feedback = row.config if isinstance(row.config, FeedbackConfig) else None
                    n = counter.count, count.from_counts(counter.per_block, calls.calls, feedback)
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


def _setup(settings: BenchSettings, build: Callable[..., nn.Module] | None) -> tuple[nn.Module, Any, Setup]:
    """The model, its sampling inputs and what every record shares."""
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
    text_tokens = settings.text_tokens or spec.max_sequence_length
    guidance = settings.resolved_guidance()
    if settings.family:  # FLUX.1, SD3.5, Qwen-Image, Wan: the pipeline's own inputs and loop (inputs.py)
        inputs = make_flow_inputs(model, spec, settings.batch, resolution, settings.resolved_width(),
                                  settings.resolved_frames(), guidance, settings.seed, text_tokens, device, dtype)
        sequences = inputs.sequences
    else:
        inputs = make_inputs(model, settings.batch, resolution, guidance, settings.seed, text_tokens, device, dtype)
        sequences = settings.batch * (2 if guidance > 1 else 1)
    call = {"hidden_states": inputs.latents, **inputs.cond}
    flops = model_flops(model, *call_tokens(model, call))
    blocks = model_blocks(model)
    attention = next((type(m.processor).__name__ for m in blocks[0].modules() if hasattr(m, "processor")), "none")
    setup = Setup(settings, len(blocks), resolution, text_tokens,
                  sum(p.numel() * p.element_size() for p in model.parameters()) / MIB, device, attention,
                  flops, sequences)
    if settings.no_blocks:
        model.transformer_blocks = nn.ModuleList(IdentityBlock(b) for b in model.transformer_blocks)
        setup.attention = "none (no_blocks)"
    return model, inputs, setup


def _reference_pass(runner: _Runner, rows: list[BenchRow], bar: Any, flops: ModelFlops
                    ) -> tuple[dict[str, tuple[int, int] | None], dict[str, torch.Tensor], dict[str, str]]:
    """Every row once, eager, default attention: ((block forwards, FLOPs per image), output latents, errors)
    by row name.

    A row whose method fails eager (e.g. a peer library missing) is recorded with its error and skipped later;
    the reference row failing is fatal.
    """
    counts: dict[str, tuple[int, int] | None] = {r.name: None for r in rows}
    outputs: dict[str, torch.Tensor] = {}
    failed: dict[str, str] = {}
    for row in rows:
        try:
            _, counts[row.name], _, out = runner.run(row, count=flops)
        except Exception as err:  # noqa: BLE001
            if row is rows[0]:  # the reference row
                raise
            failed[row.name] = _error(err)
        else:
            outputs[row.name] = out
            if not torch.isfinite(out).all():
                tqdm.write(f"warning: {row.name}: non-finite latents (random weights); timing is unaffected")
        bar.update(1)
    return counts, outputs, failed


def _variant_pass(runner: _Runner, timings: list[RowTiming], reference: dict[str, torch.Tensor], scope: str,
                  sdpa: str, repeats: int, bar: Any) -> str:
    """Warm-up (compared with the reference), one profiled run and `repeats` interleaved timed rounds per row.

    Fills `timings` in place; returns the attention ops of one step of the reference row.
    """
    ops = ""
    with sdpa_backend(sdpa):
        try:
            runner.set_scope(scope)
        except Exception as err:  # noqa: BLE001 - a variant that cannot be set up is recorded, not fatal
            for t in timings:
                t.error = t.error or _error(err)
        for t in timings:  # warm-up (compiles), compared with the reference pass
            bar.update(1)
            if t.error:
                continue
            g0 = unique_graphs()
            try:
                t.rel_diff = rel_diff(runner.run(t.row)[3], reference[t.row.name])
            except Exception as err:  # noqa: BLE001
                t.error = _error(err)
            t.graphs = unique_graphs() - g0
        if not timings[0].error:  # the reference row
            ops = attention_ops(lambda: runner.sample(1), runner.device)
        for t in timings:  # one profiled run per row (not timed): host ops and device kernel time
            if not t.error and runner.settings.profile:
                t.host_ops, t.kernel_seconds = runner.work(t.row)
        by_name = {t.row.name: t for t in timings}
        for r in range(repeats):
            for row in _order([t.row for t in timings], r):
                bar.update(1)
                t = by_name[row.name]
                if t.error:
                    continue
                g0 = unique_graphs()
                try:
                    seconds, _, peak, _ = runner.run(row)
                except Exception as err:  # noqa: BLE001
                    t.error = _error(err)
                    continue
                t.recompiles += unique_graphs() - g0
                t.seconds.append(seconds)
                if peak is not None:
                    t.peaks.append(peak)
    return ops


def run_bench(settings: BenchSettings, build: Callable[..., nn.Module] | None = None, progress: bool = True,
              on_variant: Callable[[list[dict[str, Any]]], Any] | None = None) -> list[dict[str, Any]]:
    """Time every row in every variant; one record per row and variant.

    Args:
        settings: what to run (validated here).
        build: `build(backbone, resolution, device, dtype) -> transformer` instead of `models.build_model`.
        progress: show a progress bar.
        on_variant: called with the records so far after each variant (the command writes the CSV there, so a
            run killed later keeps what it measured).

    Returns:
        The records (`records.CSV_COLUMNS`); a row that fails in a variant (e.g. a compile error) is recorded
        with its `error` and no timings.
    """
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, inputs, setup = _setup(settings, build)
    runner = _Runner(model, settings, setup.device, inputs)
    rows = settings.rows_list
    total = len(rows) + len(settings.variants) * len(rows) * (1 + settings.repeats)
    bar = tqdm(total=total, desc="ilf bench", disable=not progress, unit="run")
    counts, reference, failed = _reference_pass(runner, rows, bar, setup.model_flops)
    records: list[dict[str, Any]] = []
    eager_ref: float | None = None
    for scope, sdpa in settings.variants:
        timings = [RowTiming(r, *(counts[r.name] or (None, None)), error=failed.get(r.name, "")) for r in rows]
        ops = _variant_pass(runner, timings, reference, scope, sdpa, settings.repeats, bar)
        new = variant_records(timings, scope, sdpa, ops, setup, eager_ref)
        if scope == "none" and sdpa == "default" and eager_ref is None:
            eager_ref = next((r["seconds_median"] for r in new[:1]  # the reference row
                              if not math.isnan(r["seconds_median"])), None)
            for r in new:
                r["speedup_vs_eager_reference"] = (eager_ref / r["seconds_median"]) if eager_ref else float("nan")
        records += new
        if on_variant is not None:
            on_variant(records)
    uncompile(model)
    bar.close()
    return records
