"""Check LaTeX tables that a workflow run produced (CI points ILF_TABLES_DIR at results/ci after the toy DAG)."""
import os
from pathlib import Path

import pytest

from report_fixtures import tex_tabular_shape

TABLES_DIR = os.environ.get("ILF_TABLES_DIR")


@pytest.mark.skipif(not TABLES_DIR, reason="set ILF_TABLES_DIR to a workflow output folder to check its tables")
def test_produced_tables_parse():
    folder = Path(TABLES_DIR)
    names = [f"table{k}{s}.tex" for k in range(1, 7) for s in ("", "_vs_paper")]
    if "TOY" in (folder / "table1.tex").read_text():  # the toy configs (default, CI) have the flow-matching toy table
        names.append("toy_flow.tex")
    for name in names:
        tex = (folder / name).read_text()
        assert r"\caption{" in tex, name
        ncols, nrows, cells = tex_tabular_shape(tex)  # balanced braces, one tabular, full rows
        assert ncols >= 2 and nrows >= 1, name
        if "_vs_paper" not in name and "TOY" in tex:
            assert not any(c == "nan" for row in cells for c in row), name
