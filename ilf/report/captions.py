"""What each table and figure of a run shows, in words, from the resolved workflow config alone (the Snakemake
report's captions): its rows with method, steps and block forwards, and the metrics it reports.

The metrics are the ones `ilf tables` and `ilf figures` pick when every metric a row asks for has values.
"""
from __future__ import annotations

from typing import Any

from ilf.report.common import METRIC_LABELS, in_table, quality_metric


def row_line(row: dict[str, Any]) -> str:
    """'name (label): method, N steps, B block forwards' of a config row."""
    label = f" ({row['label']})" if row.get("label") not in (None, row["name"]) else ""
    return (f"{row['name']}{label}: {row['method']}, {row['steps']} steps, "
            f"{row.get('block_forwards_analytic')} block forwards")


def _frame(rows: list[dict[str, Any]]):
    """The rows as a summary-like frame whose metric columns are set where a row asks for the metric."""
    import pandas as pd

    from ilf.harness.workflow_config import row_tables

    return pd.DataFrame([{"row": r["name"], "table": ",".join(row_tables(r)), "group": r.get("group"),
                          "method": r["method"], "world": r.get("world"), **{m: 1.0 for m in r.get("metrics") or []}}
                         for r in rows])


def _metric_names(names: list[str]) -> str:
    return ", ".join(f"{METRIC_LABELS.get(m, m)} ({m})" for m in names) or "none"


def _quality(part) -> list[str]:
    metric = quality_metric(part)
    return [metric] if metric else []


def _lines(rows: list[dict[str, Any]], names: list[str]) -> str:
    return "; ".join(row_line(r) for r in rows if r["name"] in names) or "none in this run"


def report_about(config: dict[str, Any]) -> dict[str, str]:
    """One sentence or two per table (`table1`..`table6`, an own table such as `toy_flow` with rows) and figure kind (`fig7`, `fig8`, `pareto`,
    `qualitative`, `features`) of a resolved config: its rows and the metrics it shows."""
    from ilf.report.figures import qualitative_rows
    from ilf.report.tables import OWN_SPECS, SPECS, table_metrics

    rows = config["rows"]
    frame = _frame(rows)
    toy = config.get("world") == "toy"
    about: dict[str, str] = {}
    for k, spec in SPECS.items():
        part = in_table(frame, k)
        metrics = table_metrics(part.reset_index(drop=True), spec, toy)
        about[f"table{k}"] = (f"Rows: {_lines(rows, list(part['row']))}. Metric columns: {_metric_names(metrics)}.")
    for k, spec in OWN_SPECS.items():
        part = in_table(frame, k)
        if not part.empty:
            metrics = table_metrics(part.reset_index(drop=True), spec, toy)
            about[k] = f"Rows: {_lines(rows, list(part['row']))}. Metric columns: {_metric_names(metrics)}."
    for tag in ("fig7", "fig8"):
        part = in_table(frame, tag)
        if part.empty:
            part = frame[frame["method"] == "ilf"] if tag == "fig7" else frame[frame["group"] == frame["group"].iloc[0]]
        about[tag] = f"Rows: {_lines(rows, list(part['row']))}. Quality: {_metric_names(_quality(part))}."
    about["pareto"] = " ".join(
        f"Group {g}: every row ({len(part)}), quality {_metric_names(_quality(part))}."
        for g, part in frame.groupby("group", sort=False))
    about["qualitative"] = " ".join(
        f"qualitative_{b}: {', '.join(r['row'] for r in qualitative_rows(_frame_with_steps(rows, b)))}."
        for b in dict.fromkeys(r["backbone"] for r in rows))
    about["features"] = " ".join(
        f"{f['name']}: backbone {f['backbone']}, {f.get('steps')} steps, cache {f.get('cache')}."
        for f in config.get("features") or []) or "No feature figures in this run."
    return about


def _frame_with_steps(rows: list[dict[str, Any]], backbone: str):
    frame = _frame([r for r in rows if r["backbone"] == backbone])
    return frame.assign(steps=[r["steps"] for r in rows if r["backbone"] == backbone])
