"""LaTeX tables laid out like the paper's Tables 1-6, regenerated from `summary.csv` only (pandas Styler).

Each `tableK(summary, world)` returns the LaTeX text of the paper's Table K for the rows of this run
(the summary rows whose `table` names K, in config order). Latency cells read "3.63 (1.8x)" (speedup
against the row's reference, paper Sec. 4.2); metrics carry their confidence interval where the
metrics step computed one; anything missing prints "--". The fidelity columns (psnr_ref, ssim_ref,
lpips_ref) follow the quality columns wherever the rows have them; the reference itself prints "ref.".
Emphasis follows the paper: Table 1 bolds the best *efficient* result per model (the 12-step baseline,
cache and ILF; not the 20-step reference); Table 4 bolds the best and underlines the second best per
model; Tables 3, 5 and 6 bold the best of the table (the printed text does not show their emphasis: our
choice). On the toy world
every caption and the first line say TOY, and the toy metrics replace the paper's.
`table_vs_paper(k, ...)` sets the paper's printed numbers (configs/paper_numbers.csv) beside this
run's, matched through `paper_row`.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ilf.io import write_text_atomic
from ilf.report.common import (FIDELITY_METRICS, LOWER_IS_BETTER, METRIC_LABELS, PAPER_METRICS, TOY_METRICS,
                               as_float, available_metrics, in_table, is_missing, is_own_reference, is_toy, split_keys)

DASH = "--"
T1_METRICS = ("image_reward", "clip_score", "fid_mjhq", "clipiqa_good", "clipiqa_noisy", "clipiqa_colorful",
              "clipiqa_natural")
METRIC_GROUP = {"image_reward": "Prompt-aware Metrics", "clip_score": "Prompt-aware Metrics",
                "fid_mjhq": r"FID$\downarrow$", "fid_imagenet": r"FID$\downarrow$",
                **{m: "CLIP Image Quality Assessment" for m in T1_METRICS[3:]}}
TOY_GROUP = "TOY metrics"
FIDELITY_GROUP = "Fidelity to reference"  # psnr_ref, ssim_ref, lpips_ref: the row's reference prints REF
REF = "ref."
BOLD, UNDERLINE = "textbf:--rwrap;", "underline:--rwrap;"
TEXT_COLUMNS = ("Model", "Paper row", "Caching Location")  # left-aligned; numbers are right-aligned


@dataclass(frozen=True)
class TableSpec:
    """How one table is laid out: a paper table (`number` 1..6) or one of this project's own (`number` its id)."""

    number: int | str
    title: str
    settings: tuple[tuple[str, str], ...]  # (summary column, header) of the settings columns
    metrics: tuple[str, ...]  # the paper's metric columns
    toy_fallback: tuple[str, ...]  # toy metric columns when the run has none of them
    emphasis: str  # "efficient" | "overall" | "best" | "none"
    per_group: bool  # emphasis within each model/resolution group
    speedup_decimals: int = 1
    blocks_header: str = r"\# Blocks"


SPECS: dict[int, TableSpec] = {
    1: TableSpec(1, "Main results, high-quality text-to-image generation, speedups against 20-step DPM-Solver++",
                 (("label", "Model"), ("resolution", "Res."), ("steps", r"\# Steps")), T1_METRICS,
                 ("toy_adherence", "toy_kid"), "efficient", True),
    2: TableSpec(2, "Class-to-image results (the paper's: ImageNet, DiT 256x256)", (("label", "Model"), ("steps", r"\# Steps")),
                 ("fid_imagenet",), ("toy_class_accuracy", "toy_kid"), "none", True),
    3: TableSpec(3, "Loop size and location ablation, 12 steps (the paper's: PixArt-alpha 512x512)",
                 (("loop_start", "Start"), ("loop_end", "End")), ("image_reward", "fid_mjhq"),
                 ("toy_adherence", "toy_kid"), "best", False, 2),
    4: TableSpec(4, "Main results at 1.4x-1.5x speedups against 20-step DPM-Solver++",
                 (("label", "Model"), ("resolution", "Res."), ("steps", r"\# Steps")), T1_METRICS,
                 ("toy_adherence", "toy_kid"), "overall", True),
    5: TableSpec(5, "All metrics for the loop size and location ablation of Table 3",
                 (("loop_start", "Start"), ("loop_end", "End")), T1_METRICS, ("toy_adherence", "toy_kid"),
                 "best", False, 2),
    6: TableSpec(6, "Caching exploration, different locations (the paper's: PixArt-alpha 512x512)",
                 (("cache_location", "Caching Location"), ("steps", r"\# Steps")), ("image_reward",),
                 ("toy_adherence", "toy_kid"), "best", False, blocks_header=r"\# Block Forward"),
}


# Tables of this project's own (no paper counterpart, so no "vs paper" table): id -> layout. A row joins one with
# `table: <id>`; `ilf tables` writes `<id>.tex` / `<id>.html` when the summary has rows of it.
OWN_SPECS: dict[str, TableSpec] = {
    "toy_flow": TableSpec("toy_flow", "The flow-matching toy toy-flux (FluxTransformer2DModel, 2 double- + 4 "
                          "single-stream blocks, FlowMatchEulerDiscreteScheduler, true CFG: two transformer calls per "
                          "step), speedups against 20 steps; fidelity against the 20-step images",
                          (("label", "Model"), ("steps", r"\# Steps")), (), ("toy_adherence", "toy_kid"),
                          "efficient", True),
}


def spec_of(k: int | str) -> TableSpec:
    """The layout of paper table `k` (1..6) or of an own table (`OWN_SPECS`, e.g. "toy_flow")."""
    return SPECS[k] if isinstance(k, int) else OWN_SPECS[k]


def table_name(k: int | str) -> str:
    """The file stem of table `k`: "table1" .. "table6", or an own table's id."""
    return f"table{k}" if isinstance(k, int) else str(k)


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters in a plain-text cell."""
    s = str(text).replace("\\", "\x00")
    for a, b in (("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}"),
                 ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s.replace("\x00", r"\textbackslash{}")


def fmt_number(value: Any, decimals: int = 2) -> str:
    v = as_float(value)
    return DASH if math.isnan(v) else f"{v:.{decimals}f}"


@dataclass(frozen=True)
class Markup:
    """How a cell's text is marked up: LaTeX for the .tex tables, HTML for the report's pages."""

    escape: Callable[[Any], str]  # plain text -> safe text
    small: Callable[[str], str]  # a confidence interval's smaller print


LATEX = Markup(latex_escape, lambda text: rf"{{\scriptsize {text}}}")
HTML = Markup(lambda text: html.escape(str(text)), lambda text: f"<small>{text}</small>")


def fmt_int(value: Any, markup: Markup = LATEX) -> str:
    v = as_float(value)
    if math.isnan(v):
        return DASH if is_missing(value) else markup.escape(value)  # e.g. "dynamic"
    return f"{int(v)}" if v.is_integer() else f"{v:.1f}"


def fmt_seconds(value: Any) -> str:
    v = as_float(value)
    if math.isnan(v):
        return DASH
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3g}"


def fmt_speedup(value: Any, decimals: int = 1) -> str:
    v = as_float(value)
    return DASH if math.isnan(v) else f"{v:.{decimals}f}x"


def decimals_of(metric: str) -> int:
    return 3 if metric in ("toy_adherence", "toy_class_accuracy", "toy_kid", "ssim_ref", "lpips_ref") else 2


def fmt_metric(row: pd.Series, metric: str, ci: bool = True, markup: Markup = LATEX) -> str:
    """'93.14' or '0.812 {\\scriptsize [0.78, 0.84]}' (HTML: '0.812 <small>[0.78, 0.84]</small>') or '--' ('ref.' for
    a fidelity metric of its own reference)."""
    if metric in FIDELITY_METRICS and is_missing(row.get(metric)) and is_own_reference(row):
        return REF
    d = decimals_of(metric)
    text = fmt_number(row.get(metric), d)
    lo, hi = as_float(row.get(f"{metric}_ci_low")), as_float(row.get(f"{metric}_ci_high"))
    if ci and text != DASH and not math.isnan(lo) and not math.isnan(hi):
        text += " " + markup.small(f"[{lo:.{d}f}, {hi:.{d}f}]")
    return text


def is_reference(row: pd.Series) -> bool:
    """A row that is its own speedup reference (the 20-step baseline) prints no speedup."""
    return is_missing(row.get("reference_row")) or row.get("reference_row") == row.get("row")


def rank_marks(values: list[Any], lower_is_better: bool, marks: int = 2) -> list[str | None]:
    """'best' / 'second' / None per value (ties share a mark; missing values get none)."""
    nums = [as_float(v) for v in values]
    distinct = sorted({v for v in nums if not math.isnan(v)}, reverse=not lower_is_better)
    names = ("best", "second")[:marks]
    lookup = {v: names[i] for i, v in enumerate(distinct[:marks])}
    return [lookup.get(v) if not math.isnan(v) else None for v in nums]


def emphasis_mask(rows: pd.DataFrame, metrics: list[str], spec: TableSpec) -> dict[tuple[int, str], str]:
    """{(position, metric): 'best'|'second'} for the cells to bold or underline."""
    if spec.emphasis == "none" or rows.empty:
        return {}
    marks = 1 if spec.emphasis in ("efficient", "best") else 2
    groups = rows.groupby(rows["group"].fillna(""), sort=False).indices if spec.per_group else {"": range(len(rows))}
    out: dict[tuple[int, str], str] = {}
    for positions in groups.values():
        positions = [int(p) for p in positions]
        if spec.emphasis == "efficient":
            positions = [p for p in positions if not is_reference(rows.iloc[p])]
        for m in metrics:
            ranks = rank_marks([rows.iloc[p].get(m) for p in positions], m in LOWER_IS_BETTER, marks)
            out.update({(p, m): r for p, r in zip(positions, ranks) if r})
    return out


# Toy FID stays in summary.csv (named as such) but not in the tables: at the toy's few dozen images per row its
# small-sample bias dominates and it ranks fewer steps as better; toy KID (unbiased) takes its place.
NOT_IN_TABLES: tuple[str, ...] = ("toy_fid",)


def table_metrics(rows: pd.DataFrame, spec: TableSpec, toy: bool) -> list[str]:
    """The metric columns: the paper's, or on the toy world the toy metrics this run has; then the fidelity metrics
    this table's rows have (both worlds)."""
    fidelity = available_metrics(rows, FIDELITY_METRICS)
    if not toy:
        return list(spec.metrics) + fidelity
    found = available_metrics(rows, [m for m in TOY_METRICS if m in spec.toy_fallback] +
                              [m for m in TOY_METRICS if m not in spec.toy_fallback and m not in NOT_IN_TABLES])
    return (found or list(spec.toy_fallback)) + fidelity


def _caption(spec: TableSpec, toy: bool, suffix: str = "") -> str:
    text = f"Table {spec.number} (this run): {spec.title}{suffix}."
    if toy and isinstance(spec.number, str):
        return "TOY world (toy metrics; not comparable to any paper's numbers). " + text
    if toy:
        return ("TOY world (14-block toy backbones, toy metrics; not comparable to the paper's numbers). " + text)
    return text


def _first_line(spec: TableSpec, toy: bool, what: str) -> str:
    world = "TOY world, toy metrics" if toy else "paper world"
    return f"% {what} {spec.number} ({world}): generated by `ilf tables` from stored results; do not edit by hand.\n"


def _render(cells: pd.DataFrame, styles: dict[tuple[int, int], str], caption: str, label: str,
            group_breaks: list[int]) -> str:
    """Styler.to_latex with bold/underline props and a \\midrule between groups of rows."""
    styler = cells.style.hide(axis="index")
    if styles:
        def props(col: pd.Series) -> list[str]:
            j = cells.columns.get_loc(col.name)
            return [styles.get((i, j), "") for i in range(len(col))]
        styler = styler.apply(props, axis=0)
    column_format = "".join("l" if c[1] in TEXT_COLUMNS else "r" for c in cells.columns)
    latex = styler.to_latex(hrules=True, multicol_align="c", caption=caption, label=label,
                            column_format=column_format, position="t")
    if not group_breaks:
        return latex
    lines = latex.splitlines()
    start = lines.index(r"\midrule") + 1
    for k in sorted(group_breaks, reverse=True):
        lines.insert(start + k, r"\midrule")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TableCells:
    """One table's content before it is set in LaTeX or HTML: two-level headers (LaTeX-safe text), body cells
    (already marked up), the emphasis per cell, the body rows a rule goes above, and the caption."""

    columns: list[tuple[str, str]]
    body: list[list[str]]
    marks: dict[tuple[int, int], str]  # (row, column) -> "best" | "second"
    breaks: list[int]
    caption: str


def table_cells(summary: pd.DataFrame, k: int | str, world: str | None = None, ci: bool = True,
                markup: Markup = LATEX) -> TableCells:
    """The cells of paper Table `k` (or own table `k`, `OWN_SPECS`) for this run's rows (see module docstring)."""
    spec, toy = spec_of(k), is_toy(summary, world)
    rows = in_table(summary, k).reset_index(drop=True)
    metrics = table_metrics(rows, spec, toy)
    by_name = {r["row"]: r for _, r in summary.iterrows()} if "row" in summary.columns else {}
    columns = [("Settings", h) for _, h in spec.settings] + [("Latency", spec.blocks_header)]
    if k != 6:
        columns.append(("Latency", "s / img"))
    columns += [(FIDELITY_GROUP if m in FIDELITY_METRICS else TOY_GROUP if toy else METRIC_GROUP.get(m, "Metrics"),
                 latex_escape(METRIC_LABELS[m]) + (r"$\downarrow$" if m in LOWER_IS_BETTER else "")) for m in metrics]
    body = []
    for _, row in rows.iterrows():
        cells = [markup.escape(row.get(c)) if c in ("label", "cache_location") and not is_missing(row.get(c))
                 else fmt_int(row.get(c), markup) for c, _ in spec.settings]
        cells.append(fmt_int(row.get("block_forwards_measured"), markup))
        if k != 6:
            s = fmt_seconds(row.get("seconds_per_image"))
            if s != DASH and not is_reference(row) and not math.isnan(as_float(row.get("speedup_seconds"))):
                s += f" ({fmt_speedup(row.get('speedup_seconds'), spec.speedup_decimals)})"
            cells.append(s)
        for m in metrics:
            text = fmt_metric(row, m, ci, markup)
            ref = by_name.get(row.get("reference_row"))
            if k == 2 and text != DASH and ref is not None and not is_reference(row) and m not in FIDELITY_METRICS:
                delta = as_float(row.get(m)) - as_float(ref.get(m))
                text += "" if math.isnan(delta) else f" ({delta:+.2f})"  # Table 2 prints the FID change
            cells.append(text)
        body.append(cells)
    if not body:
        body = [[DASH] * len(columns)]
    offset = len(columns) - len(metrics)
    marks = {(i, offset + metrics.index(m)): mark for (i, m), mark in emphasis_mask(rows, metrics, spec).items()}
    breaks = [i for i in range(1, len(rows)) if spec.per_group and rows["group"].iloc[i] != rows["group"].iloc[i - 1]]
    suffix = "" if len(rows) else " (no rows of this table in this run)"
    return TableCells(columns, body, marks, breaks, _caption(spec, toy, suffix))


def render_table(summary: pd.DataFrame, k: int | str, world: str | None = None, ci: bool = True) -> str:
    """The LaTeX of paper Table `k` (or own table `k`, `OWN_SPECS`) for this run's rows (see module docstring)."""
    cells = table_cells(summary, k, world, ci)
    frame = pd.DataFrame(cells.body, columns=pd.MultiIndex.from_tuples(cells.columns))
    styles = {pos: (BOLD if mark == "best" else UNDERLINE) for pos, mark in cells.marks.items()}
    return (_first_line(spec_of(k), is_toy(summary, world), "Table")
            + _render(frame, styles, cells.caption, f"tab:{table_name(k)}", cells.breaks))


def own_tables(summary: pd.DataFrame) -> list[str]:
    """The own tables (`OWN_SPECS`) this summary has rows of."""
    return [k for k in OWN_SPECS if not in_table(summary, k).empty]


_TABLE_DOCS = {
    1: "Paper Table 1: main results at 1.7x-1.8x; bold = best efficient result per model.",
    2: "Paper Table 2: DiT class-to-image; FID with its change against the row's reference baseline.",
    3: "Paper Table 3: loop size and location ablation (Image Reward, MJHQ FID).",
    4: "Paper Table 4: 1.4x-1.5x results; bold best overall, underline second, per model.",
    5: "Paper Table 5: all metrics of the Table 3 loops.",
    6: "Paper Table 6: caching locations.",
}


def _table(k: int) -> Callable[[pd.DataFrame, str | None], str]:
    """`render_table` for paper table `k` as a function `table<k>(summary, world=None)`."""

    def table(summary: pd.DataFrame, world: str | None = None) -> str:
        return render_table(summary, k, world)

    table.__name__ = table.__qualname__ = f"table{k}"
    table.__doc__ = _TABLE_DOCS[k]
    return table


TABLES: dict[int, Callable[[pd.DataFrame, str | None], str]] = {k: _table(k) for k in _TABLE_DOCS}
table1, table2, table3, table4, table5, table6 = (TABLES[k] for k in sorted(TABLES))


def _run_row_for(summary: pd.DataFrame, key: str) -> pd.Series | None:
    if "paper_row" not in summary.columns:
        return None
    hits = summary[summary["paper_row"].map(lambda v: key in split_keys(v))]
    return hits.iloc[0] if len(hits) else None


def vs_paper_cells(summary: pd.DataFrame, paper: pd.DataFrame, k: int, world: str | None = None,
                   markup: Markup = LATEX) -> TableCells:
    """Paper Table `k` beside this run: per quantity a 'paper' and a 'run' column, matched via `paper_row`."""
    spec, toy = SPECS[k], is_toy(summary, world)
    prows = in_table(paper, k).reset_index(drop=True)
    run_rows = [_run_row_for(summary, key) for key in prows["paper_row"]]
    matched = pd.DataFrame([r for r in run_rows if r is not None])
    paper_metrics = [m for m in PAPER_METRICS if m in prows.columns and prows[m].notna().any()]
    run_metrics = available_metrics(matched, [m for m in PAPER_METRICS + TOY_METRICS + FIDELITY_METRICS
                                              if m not in paper_metrics])
    header = [("", "Paper row")]
    quantities: list[tuple[str, Callable[[Any], str], Callable[[Any], str]]] = [
        (spec.blocks_header, lambda p: fmt_int(p.get("block_forwards"), markup),
         lambda r: fmt_int(r.get("block_forwards_measured"), markup)),
        ("s / img", lambda p: fmt_seconds(p.get("seconds_per_image")), lambda r: fmt_seconds(r.get("seconds_per_image"))),
        ("Speedup", lambda p: fmt_speedup(p.get("speedup_printed"), spec.speedup_decimals),
         lambda r: DASH if is_reference(r) else fmt_speedup(r.get("speedup_seconds"), spec.speedup_decimals)),
    ]
    for m in paper_metrics + run_metrics:
        d = decimals_of(m)
        quantities.append((latex_escape(METRIC_LABELS.get(m, m)) + (r"$\downarrow$" if m in LOWER_IS_BETTER else ""),
                           lambda p, m=m, d=d: fmt_number(p.get(m), d), lambda r, m=m, d=d: fmt_number(r.get(m), d)))
    for name, _, _ in quantities:
        header += [(name, "paper"), (name, "run")]
    body = []
    for (_, prow), rrow in zip(prows.iterrows(), run_rows):
        cells = [markup.escape(f"{prow['label']} ({prow['group']}, {int(prow['steps'])} steps)")]
        for _, pf, rf in quantities:
            cells += [pf(prow), rf(rrow) if rrow is not None else DASH]
        body.append(cells)
    if not body:
        body = [[DASH] * len(header)]
    suffix = "; paper (printed) vs this run"
    if toy:
        suffix += "; the toy backbones have 14 blocks (paper 28), so block counts halve"
    return TableCells(header, body, {}, [], _caption(spec, toy, suffix))


def table_vs_paper(summary: pd.DataFrame, paper: pd.DataFrame, k: int, world: str | None = None) -> str:
    """The LaTeX of paper Table `k` beside this run (`vs_paper_cells`)."""
    cells = vs_paper_cells(summary, paper, k, world)
    frame = pd.DataFrame(cells.body, columns=pd.MultiIndex.from_tuples(cells.columns))
    return (_first_line(SPECS[k], is_toy(summary, world), "Paper vs run, table")
            + _render(frame, {}, cells.caption, f"tab:table{k}_vs_paper", []))


def write_tables(summary: pd.DataFrame, paper: pd.DataFrame | None, out_dir: Path,
                 world: str | None = None) -> list[Path]:
    """Write table1.tex..table6.tex and table{k}_vs_paper.tex, and `<id>.tex` of each own table the summary has rows
    of (`OWN_SPECS`, e.g. toy_flow.tex) (atomically); return the paths."""
    out_dir = Path(out_dir)
    paths = []
    for k, fn in TABLES.items():
        path = out_dir / f"table{k}.tex"
        write_text_atomic(path, fn(summary, world))
        paths.append(path)
        if paper is not None:
            path = out_dir / f"table{k}_vs_paper.tex"
            write_text_atomic(path, table_vs_paper(summary, paper, k, world))
            paths.append(path)
    for k in own_tables(summary):
        path = out_dir / f"{k}.tex"
        write_text_atomic(path, render_table(summary, k, world))
        paths.append(path)
    return paths
