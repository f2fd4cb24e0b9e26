"""The tables as HTML pages for the Snakemake report: `table{k}.html` (this run's Table k, then the paper's printed
numbers beside this run) and `summary.html` (every row's settings, results and provenance), from summary.csv only.

The cells are `ilf.report.tables`' (the same values, emphasis and captions as the LaTeX tables), set in HTML.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ilf.io import write_text_atomic
from ilf.report.tables import HTML, SPECS, TableCells, own_tables, spec_of, table_cells, vs_paper_cells

STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:3px 8px;border-bottom:1px solid #ddd}
th{background:#f3f3f3;text-align:center}td{text-align:right;white-space:nowrap}td.text{text-align:left}
tr.break td{border-top:2px solid #888}small{color:#666}.caption{max-width:70em}.wide td{white-space:normal}
.note{color:#555;font-size:12px}"""
# LaTeX in the shared headers -> plain text
_LATEX_TEXT = ((r"$\downarrow$", " \u2193"), (r"\#", "#"), (r"\_", "_"), (r"\&", "&"), (r"\%", "%"), (r"\$", "$"))


def plain(text: str) -> str:
    """A header written for LaTeX as HTML-escaped plain text."""
    for latex, out in _LATEX_TEXT:
        text = text.replace(latex, out)
    return html.escape(text)


def cells_html(cells: TableCells) -> str:
    """A `<table>`: two header rows (equal neighbouring groups merged), best values bold, second underlined."""
    groups: list[list] = []
    for group, _ in cells.columns:
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    head = "".join(f'<th colspan="{n}">{plain(g)}</th>' for g, n in groups)
    names = "".join(f"<th>{plain(name)}</th>" for _, name in cells.columns)
    body = []
    for i, row in enumerate(cells.body):
        tds = []
        for j, text in enumerate(row):
            mark = cells.marks.get((i, j))
            text = f"<strong>{text}</strong>" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text
            numeric = text[:1].isdigit() or text.startswith(("-", "<"))
            tds.append(f"<td{'' if numeric else ' class=text'}>{text}</td>")
        body.append(f"<tr{' class=break' if i in cells.breaks else ''}>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{head}</tr><tr>{names}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> str:
    """A self-contained HTML page (inline CSS, no scripts)."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table_page(summary: pd.DataFrame, paper: pd.DataFrame | None, k: int | str, world: str | None = None) -> str:
    """Table `k` of this run, then (with `paper`, for a paper table) the paper's printed numbers beside this run's."""
    run = table_cells(summary, k, world, markup=HTML)
    parts = [f'<p class="caption">{html.escape(run.caption)}</p>', cells_html(run)]
    if paper is not None and isinstance(k, int):
        vs = vs_paper_cells(summary, paper, k, world, markup=HTML)
        parts += [f"<h2>The paper's Table {k} beside this run</h2>", f'<p class="caption">{html.escape(vs.caption)}</p>',
                  cells_html(vs)]
    parts.append('<p class="note">Bold: best, underlined: second best (as in the LaTeX table); '
                 "[low, high]: 95% confidence interval; --: no value. Written by <code>ilf tables</code> "
                 "from summary.csv and the paper's numbers (configs/paper_numbers.csv).</p>")
    return page(f"Table {spec_of(k).number}", "\n".join(parts))


PROVENANCE = ("row", "label", "method", "steps", "block_forwards_measured", "seconds_per_image", "seed",
              "config_hash", "git_commit", "device", "date", "versions")


def summary_page(summary: pd.DataFrame) -> str:
    """Every row's provenance, then the whole summary.csv."""
    prov = summary.reindex(columns=[c for c in PROVENANCE if c in summary.columns])
    full = summary.dropna(axis=1, how="all")
    body = ('<p class="caption">Provenance of every row (config hash, git commit, package versions, device, date, '
            "base seed), then every column of summary.csv.</p>"
            + prov.to_html(index=False, na_rep="--", classes="wide", border=0)
            + "<h2>summary.csv</h2>" + full.to_html(index=False, na_rep="--", border=0))
    return page("Summary and provenance of every row", body)


def write_html_tables(summary: pd.DataFrame, paper: pd.DataFrame | None, out_dir: Path,
                      world: str | None = None) -> list[Path]:
    """Write `table1.html` ... `table6.html`, `<id>.html` of each own table with rows (as `write_tables` writes the
    .tex tables) and `summary.html`.

    Args:
        summary: summary.csv as `read_summary` returns it.
        paper: the paper's numbers (`load_paper_numbers`), or None for this run's tables alone.
        out_dir: folder for the pages.
        world: "toy" or "paper" to override the summary's `world` column.

    Returns:
        The written paths.
    """
    out_dir = Path(out_dir)
    paths = []
    for k in [*SPECS, *own_tables(summary)]:
        path = out_dir / (f"table{k}.html" if isinstance(k, int) else f"{k}.html")
        write_text_atomic(path, table_page(summary, paper, k, world))
        paths.append(path)
    path = out_dir / "summary.html"
    write_text_atomic(path, summary_page(summary))
    return paths + [path]
