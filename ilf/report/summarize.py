"""The row summary: one tidy CSV row per table row, and `summary.csv`, rebuilt from stored results only.

Inputs per row (the generation and metrics records, docs/formats.md): `<out_dir>/rows/<row>/generation.jsonl`
(one record per image) and `<out_dir>/rows/<row>/metrics_summary.json`. Outputs: `<out_dir>/rows/<row>.csv` and
`<out_dir>/summary.csv`, both written atomically. Speedups (paper Sec. 4.2) are relative to the row's
reference: `reference_row` if the config names one, else the baseline of the same group with the most
steps (the paper's 20-step DPM-Solver++ baseline), in seconds, block forwards and analytic FLOPs
(`speedup_seconds`, `speedup_blocks`, `speedup_flops`); the fidelity metrics (`psnr_ref`, ...) compare with the
same row.
"""
from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ilf.errors import ILFConfigError
from ilf.harness.reference import pick_reference
from ilf.io import atomic_path, read_jsonl
from ilf.report.common import METHODS, METRICS, WORLDS, as_float, is_missing, summary_columns

DYNAMIC = "dynamic"


def row_dir(out_dir: Path, name: str) -> Path:
    """Where `ilf generate` and `ilf metrics` put a row's images and records."""
    return Path(out_dir) / "rows" / name


def _lookup(key: str, *sources: Any) -> Any:
    """The first non-missing `key` in the given dicts or in their 'feedback'/'cache'/'method_config' parts."""
    for src in sources:
        if not isinstance(src, dict):
            continue
        for d in (src, src.get("feedback"), src.get("cache"), src.get("method_config")):
            if isinstance(d, dict) and not is_missing(d.get(key)):
                return d[key]
    return None


def _text(value: Any) -> Any:
    """Lists (feedback steps, tables) as compact strings so the CSV stays one value per cell."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def _resolution(row: dict, record: dict) -> Any:
    res = _lookup("resolution", row, record)
    if res is not None:
        return res
    backbone = row.get("backbone")
    try:
        from ilf.registry import BACKBONES
        if backbone in BACKBONES:
            return BACKBONES[backbone].resolution
    except ImportError:  # pragma: no cover
        pass
    if isinstance(backbone, str) and backbone.startswith("toy-"):
        from ilf.toy.backbones import RESOLUTION
        return RESOLUTION
    return None


def _block_forwards(name: str, records: list[dict]) -> tuple[Any, float]:
    """(analytic, measured) for a row; every record's measured count must equal its analytic one."""
    analytic_values, measured = set(), []
    for rec in records:
        a, m = rec.get("block_forwards_analytic"), rec.get("block_forwards_measured")
        if is_missing(m):
            raise ValueError(f"row {name!r}, image {rec.get('index')}: block_forwards_measured is missing")
        if a == DYNAMIC:
            analytic_values.add(DYNAMIC)
        else:
            if is_missing(a) or int(a) != int(m):
                raise ValueError(f"row {name!r}, image {rec.get('index')}: block_forwards_measured={m} != "
                                 f"block_forwards_analytic={a} (the accounting of METHOD.md must agree)")
            analytic_values.add(int(a))
        measured.append(float(m))
    analytic = analytic_values.pop() if len(analytic_values) == 1 else (DYNAMIC if DYNAMIC in analytic_values else None)
    mean = sum(measured) / len(measured)
    return analytic, (int(mean) if mean.is_integer() else mean)


def _metric_values(summary: dict | None, names: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    metrics = (summary or {}).get("metrics", {}) or {}
    for m in names:
        entry = metrics.get(m) or {}
        out[m] = as_float(entry.get("value"))
        out[f"{m}_ci_low"] = as_float(entry.get("ci_low"))
        out[f"{m}_ci_high"] = as_float(entry.get("ci_high"))
        n = entry.get("n")
        out[f"{m}_n"] = int(n) if not is_missing(n) else None
    return out


def summarize_row(row: dict, out_dir: Path, world: str, seed: Any = None, allow_missing: bool = False) -> dict[str, Any]:
    """One tidy record for a config row (speedups are filled in by `summarize_rows`)."""
    name = row.get("name")
    if not name:
        raise ILFConfigError("rows[].name", name, "a non-empty row name")
    method = row.get("method")
    if method not in METHODS:
        raise ILFConfigError(f"rows[{name}].method", method, METHODS)
    rdir = row_dir(out_dir, name)
    records = list({r.get("index"): r for r in read_jsonl(rdir / "generation.jsonl")}.values())  # last per image
    if not records and not allow_missing:
        raise FileNotFoundError(f"row {name!r}: no generation records in {rdir / 'generation.jsonl'} "
                                "(run `ilf generate` for this row first)")
    first = records[0] if records else {}
    fb = row.get("feedback") if isinstance(row.get("feedback"), dict) else {}
    cache = row.get("cache") if isinstance(row.get("cache"), dict) else {}
    rec: dict[str, Any] = {
        "row": name, "table": _text(row.get("table")), "group": row.get("group"), "label": row.get("label", name),
        "backbone": row.get("backbone"), "resolution": _resolution(row, first), "method": method,
        "steps": row.get("steps", first.get("steps")),
        "training_run": fb.get("training"), "training_iter": fb.get("iteration"),
        "t_post": fb.get("t_post") if method == "ilf" else None,
        "feedback_steps": _text(fb.get("feedback_steps")) if method == "ilf" else None,
        "loop_start": _lookup("loop_start", row, first) if method == "ilf" else None,
        "loop_end": _lookup("loop_end", row, first) if method == "ilf" else None,
        "cache_location": cache.get("location") if method == "cache" else None,
        "cache_num_blocks": cache.get("num_cached") if method == "cache" else None,
        "cache_interval": cache.get("interval") if method == "cache" else None,
        "world": world, "paper_row": row.get("paper_row"), "reference_row": row.get("reference_row"),
    }
    if records:
        rec["block_forwards_analytic"], rec["block_forwards_measured"] = _block_forwards(name, records)
        flops = [as_float(r.get("flops_per_image")) for r in records]
        flops = [f for f in flops if not math.isnan(f)]  # records written before FLOPs were recorded have none
        rec["flops_per_image"] = statistics.fmean(flops) if len(flops) == len(records) else None
        spi = [as_float(r.get("seconds_per_image")) for r in records]
        spi = [s for s in spi if not math.isnan(s)]
        rec["seconds_per_image"] = statistics.median(spi) if spi else math.nan
        for key in ("config_hash", "git_commit", "versions"):
            rec[key] = first.get(key)
        devices = sorted({str(r.get("device")) for r in records if not is_missing(r.get("device"))})
        rec["device"] = "; ".join(devices) or None
        dates = sorted(str(r.get("date")) for r in records if not is_missing(r.get("date")))
        rec["date"] = dates[-1] if dates else None
    rec["seed"] = row.get("seed", seed if seed is not None else first.get("seed"))
    metrics_path = rdir / "metrics_summary.json"
    summary = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if summary is None and records:
        warnings.warn(f"row {name!r}: no {metrics_path}; its metric columns stay empty", stacklevel=2)
    extra = sorted(set((summary or {}).get("metrics", {}) or {}) - set(METRICS))
    rec.update(_metric_values(summary, [*METRICS, *extra]))
    return rec


def reference_of(rec: dict, records: list[dict]) -> dict | None:
    """The row a speedup is relative to: the named `reference_row`, else the group's baseline with most steps
    (`ilf.harness.reference.pick_reference`, the same row the fidelity metrics compare with)."""
    return pick_reference(rec, records, name_key="row")


def _ratio(ref: Any, value: Any) -> float:
    a, b = as_float(ref), as_float(value)
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def summarize_rows(rows: list[dict], out_dir: Path, world: str, seed: Any = None,
                   allow_missing: bool = False) -> pd.DataFrame:
    """Write the row summary, `<out_dir>/rows/<row>.csv` per row and `<out_dir>/summary.csv`; return the summary."""
    if world not in WORLDS:
        raise ILFConfigError("world", world, WORLDS)
    if not rows:
        raise ILFConfigError("rows", rows, "a non-empty list of row dicts")
    names = [r.get("name") for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ILFConfigError("rows[].name", dupes[0], "unique row names")
    out_dir = Path(out_dir)
    records = [summarize_row(r, out_dir, world, seed, allow_missing) for r in rows]
    for rec in records:
        ref = reference_of(rec, records)
        rec["reference_row"] = ref["row"] if ref is not None else None
        rec["speedup_seconds"] = _ratio(ref.get("seconds_per_image"), rec.get("seconds_per_image")) if ref else math.nan
        bf = rec.get("block_forwards_measured")
        rec["speedup_blocks"] = _ratio(ref.get("block_forwards_measured"), bf) if ref else math.nan
        rec["speedup_flops"] = _ratio(ref.get("flops_per_image"), rec.get("flops_per_image")) if ref else math.nan
    extra = sorted({k[:-2] for rec in records for k in rec if k.endswith("_n") and k[:-2] not in METRICS})
    columns = summary_columns(extra)
    df = pd.DataFrame(records).reindex(columns=columns)
    for i, rec in enumerate(records):
        _write_csv(df.iloc[[i]], out_dir / "rows" / f"{rec['row']}.csv")
    _write_csv(df, out_dir / "summary.csv")
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_summary(path: Path) -> pd.DataFrame:
    """Read `summary.csv` with every column of the row summary present (missing ones added empty)."""
    try:
        df = pd.read_csv(path, dtype={"table": str, "feedback_steps": str, "paper_row": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a row summary (summary.csv from `ilf summarize`): {err}") from None
    if "row" not in df.columns:
        raise ValueError(f"{path} is not a row summary (summary.csv from `ilf summarize`): it has no 'row' column")
    extra = [c[:-2] for c in df.columns if c.endswith("_n") and c[:-2] not in METRICS]
    cols = summary_columns(extra)
    return df.reindex(columns=cols + [c for c in df.columns if c not in cols])
