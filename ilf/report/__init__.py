"""Reporting: stored results -> summary CSVs, LaTeX tables and figures (the row summary). Never runs a model.

    from ilf.report import summarize_rows, write_tables, make_figures, load_paper_numbers
"""
from .paper_numbers import analytic_block_forwards, load_paper_numbers
from .summarize import read_summary, summarize_rows

__all__ = ["summarize_rows", "read_summary", "load_paper_numbers", "analytic_block_forwards", "write_tables",
           "make_figures"]


def __getattr__(name: str):  # tables/figures import pandas Styler / matplotlib lazily
    if name == "write_tables":
        from .tables import write_tables
        return write_tables
    if name == "make_figures":
        from .figures import make_figures
        return make_figures
    raise AttributeError(name)
