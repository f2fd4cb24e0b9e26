"""The fastest exact setting per backbone and row across `ilf bench` CSVs, checked against the speed goals.

    ilf bench-summary DIR      # reads DIR/*.csv, writes DIR/summary.json, prints one line per row

A setting counts as exact when its row ran without error and its output latents differ from eager with
PyTorch's default attention by at most `MAX_REL_DIFF` (relative L2; bf16 rounding through 10-20 sampling
steps). Speed goals (one H200 / H100): PixArt-alpha 1024 `ilf-t1` <= 0.30 s/img; DiT-XL/2 256
`baseline-20` <= 0.15 s/img with `ilf-t1` keeping its block ratio (efficiency >= 0.97 in the same setting).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

MAX_REL_DIFF = 0.05
GOALS = {("pixart-alpha-1024", "ilf-t1"): 0.30, ("dit-xl-2-256", "baseline-20"): 0.15}
MIN_EFFICIENCY = 0.97


def _float(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_records(folder: str | Path) -> list[dict[str, str]]:
    """Every record of every bench CSV in `folder` (each tagged with its file name as `source`)."""
    out = []
    for path in sorted(Path(folder).glob("*.csv")):
        with open(path, newline="") as fh:
            for rec in csv.DictReader(fh):
                if "seconds_median" in rec and "row" in rec:
                    out.append({**rec, "source": path.name})
    return out


def is_exact(rec: dict[str, str]) -> bool:
    diff = _float(rec.get("rel_diff_vs_eager", ""))
    return not rec.get("error") and not math.isnan(_float(rec["seconds_median"])) and (
        math.isnan(diff) and rec.get("compile", "none") == "none" and rec.get("sdpa_backend", "default") == "default"
        or diff <= MAX_REL_DIFF)


def summarize_folder(folder: str | Path) -> dict[str, Any]:
    """{"fastest": {backbone: {row: record summary}}, "goals": [...]} over the folder's CSVs."""
    best: dict[str, dict[str, dict[str, str]]] = {}
    for rec in read_records(folder):
        if not is_exact(rec):
            continue
        cur = best.setdefault(rec["backbone"], {}).get(rec["row"])
        if cur is None or _float(rec["seconds_median"]) < _float(cur["seconds_median"]):
            best[rec["backbone"]][rec["row"]] = rec
    keys = ("seconds_median", "seconds_min", "block_forwards_measured", "flops_per_image", "tflops_achieved",
            "efficiency",
            "speedup_vs_eager_reference", "rel_diff_vs_eager", "compile", "compile_mode", "sdpa_backend",
            "attention_ops", "resolution", "device", "source")
    fastest = {b: {r: {k: rec.get(k, "") for k in keys} for r, rec in rows.items()} for b, rows in best.items()}
    goals = []
    for (backbone, row), limit in GOALS.items():
        rec = best.get(backbone, {}).get(row)
        entry: dict[str, Any] = {"backbone": backbone, "row": row, "goal_seconds": limit,
                                 "seconds": _float(rec["seconds_median"]) if rec else None}
        entry["met"] = rec is not None and _float(rec["seconds_median"]) <= limit
        if rec is not None and row == "baseline-20":  # ILF keeps its block ratio in that same setting
            same = [r for r in read_records(folder) if r["source"] == rec["source"] and r["row"] == "ilf-t1"
                    and r.get("compile") == rec.get("compile") and r.get("sdpa_backend") == rec.get("sdpa_backend")]
            eff = _float(same[0]["efficiency"]) if same else math.nan
            entry["ilf_t1_efficiency_same_setting"] = None if math.isnan(eff) else eff
            entry["met"] = entry["met"] and not math.isnan(eff) and eff >= MIN_EFFICIENCY
        goals.append(entry)
    return {"max_rel_diff": MAX_REL_DIFF, "fastest": fastest, "goals": goals}


def fastest_sdpa(path: str | Path) -> str:
    """The SDPA backend of the fastest eager, error-free `baseline-20` in one bench CSV ("default" if none)."""
    try:
        with open(path, newline="") as fh:
            recs = [r for r in csv.DictReader(fh) if r.get("row") == "baseline-20" and not r.get("error")
                    and r.get("compile", "none") == "none" and not math.isnan(_float(r.get("seconds_median", "")))]
    except OSError:
        return "default"
    return min(recs, key=lambda r: _float(r["seconds_median"]))["sdpa_backend"] if recs else "default"



def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What `ilf bench-summary` prints for a `summarize_folder` result: one line per fastest row, then per goal."""
    lines = []
    for backbone, rows in summary["fastest"].items():
        for row, r in rows.items():
            lines.append(f"fastest exact {backbone:18s} {row:14s} {_float(r['seconds_median']):7.3f} s "
                         f"{_float(r['tflops_achieved']):6.1f} TFLOP/s  compile={r['compile']} {r['compile_mode']} "
                         f"sdpa={r['sdpa_backend']} ({r['source']})")
    for g in summary["goals"]:
        same = "ilf_t1_efficiency_same_setting"
        lines.append(f"goal {g['backbone']} {g['row']} <= {g['goal_seconds']} s: {g['seconds']} -> "
                     f"{'MET' if g['met'] else 'not met'}" + (f" (ilf-t1 efficiency {g[same]})" if same in g else ""))
    return lines
