"""LaTeX tables: every produced .tex parses, emphasis picks the right cells, missing data prints '--'."""
from __future__ import annotations

import pandas as pd
import pytest

from ilf.report.common import summary_columns
from ilf.report.paper_numbers import load_paper_numbers
from ilf.report.summarize import read_summary, summarize_rows
from ilf.report.tables import SPECS, rank_marks, table1, table2, table4, table_vs_paper, write_tables
from report_fixtures import tex_tabular_shape, write_paper_like_results


@pytest.fixture()
def summary(tmp_path):
    rows = write_paper_like_results(tmp_path)
    summarize_rows(rows, tmp_path, "paper")
    return read_summary(tmp_path / "summary.csv")


def test_every_table_parses(summary, tmp_path):
    paper = load_paper_numbers()
    paths = write_tables(summary, paper, tmp_path / "tables")
    assert sorted(p.name for p in paths) == sorted([f"table{k}.tex" for k in range(1, 7)] +
                                                   [f"table{k}_vs_paper.tex" for k in range(1, 7)])
    expected_rows = {1: 4, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1}  # tables without rows print one '--' row
    expected_cols = {1: 12, 2: 5, 3: 6, 4: 12, 5: 11, 6: 4}
    for k in range(1, 7):
        tex = (tmp_path / "tables" / f"table{k}.tex").read_text()
        assert r"\caption{" in tex and "TOY" not in tex
        ncols, nrows, _ = tex_tabular_shape(tex)
        assert (ncols, nrows) == (expected_cols[k], expected_rows[k]), k
        vs = (tmp_path / "tables" / f"table{k}_vs_paper.tex").read_text()
        ncols, nrows, cells = tex_tabular_shape(vs)
        assert nrows == len(paper[paper["table"] == str(k)])
        assert (ncols - 1) % 2 == 0  # label + (paper, run) pairs
    # the speedup prints in parentheses, against the 20-step reference (1.1 / 0.59 = 1.86 -> 1.9x)
    _, _, cells = tex_tabular_shape((tmp_path / "tables" / "table1.tex").read_text())
    assert cells[3][4] == "0.59 (1.9x)" and cells[0][4] == "1.10"
    # Table 2 shows the FID change against the paired baseline
    _, _, cells = tex_tabular_shape((tmp_path / "tables" / "table2.tex").read_text())
    assert cells[1][-1] == "4.06 (-0.44)"
    # paper vs run: the matched Table 1 row holds the paper's 332 beside this run's 332
    _, _, cells = tex_tabular_shape((tmp_path / "tables" / "table1_vs_paper.tex").read_text())
    ilf_row = [c for c in cells if c[0].startswith("PixArt-alpha w/ ours (pixart-alpha-512")][0]
    assert ilf_row[1:3] == ["332", "332"] and ilf_row[7:9] == ["89.47", "89.50"]


def test_rank_marks():
    assert rank_marks([1.0, 3.0, 2.0, None], lower_is_better=False) == [None, "best", "second", None]
    assert rank_marks([1.0, 3.0, 2.0], lower_is_better=True) == ["best", None, "second"]
    assert rank_marks([2.0, 2.0, 1.0], lower_is_better=False, marks=1) == ["best", "best", None]


def _constructed() -> pd.DataFrame:
    """Two groups; the 20-step reference has the best Image Reward, which Table 1 must NOT bold."""
    base = dict(table="1,4", resolution=512, world="paper")
    recs = []
    for g, ir in (("A", [99.0, 80.0, 85.0, 90.0]), ("B", [50.0, 70.0, 60.0, 65.0])):
        for name, method, steps, v, fid in zip(("b20", "b12", "cache", "ilf"), ("baseline", "baseline", "cache", "ilf"),
                                               (20, 12, 20, 10), ir, (7.0, 6.0, 8.0, 6.5)):
            recs.append(dict(base, row=f"{g}-{name}", group=g, label=f"{g} {name}", method=method, steps=steps,
                             block_forwards_measured=100, seconds_per_image=1.0, speedup_seconds=1.0,
                             image_reward=v, fid_mjhq=fid, reference_row=f"{g}-b20"))
    return pd.DataFrame(recs).reindex(columns=summary_columns())


def test_bold_best_efficient_per_group_table1():
    _, _, cells = tex_tabular_shape(table1(_constructed()))
    ir, fid = SPECS[1].metrics.index("image_reward") + 5, SPECS[1].metrics.index("fid_mjhq") + 5
    bold = [(i, j) for i, row in enumerate(cells) for j, c in enumerate(row) if c.startswith(r"\textbf")]
    # group A: best efficient IR is ILF (90, row 3), not the reference's 99; FID lower is better -> 12-step (6.0)
    # group B: best efficient IR is the 12-step baseline (70, row 5); FID -> 12-step (6.0, row 5)
    assert sorted(bold) == sorted([(3, ir), (1, fid), (5, ir), (5, fid)])
    assert not any(c.startswith(r"\underline") for row in cells for c in row)


def test_bold_and_underline_overall_table4():
    _, _, cells = tex_tabular_shape(table4(_constructed()))
    ir = SPECS[4].metrics.index("image_reward") + 5
    assert cells[0][ir] == r"\textbf{99.00}" and cells[3][ir] == r"\underline{90.00}"
    assert cells[5][ir] == r"\textbf{70.00}" and cells[7][ir] == r"\underline{65.00}"


def test_toy_world_and_missing_values(tmp_path):
    df = _constructed()
    df["world"] = "toy"
    df["image_reward"] = float("nan")
    df["toy_adherence"] = [0.5, 0.6, 0.55, 0.7, 0.1, 0.2, 0.3, 0.4]
    df["toy_adherence_ci_low"], df["toy_adherence_ci_high"] = df["toy_adherence"] - 0.05, df["toy_adherence"] + 0.05
    df = df.drop(columns=["fid_mjhq", "seconds_per_image"])  # missing columns must not crash
    tex = table1(df)
    assert tex.splitlines()[0].startswith("% ") and "TOY" in tex.splitlines()[0]
    assert r"\caption{TOY" in tex and "Image Reward" not in tex and "toy adherence" in tex
    ncols, nrows, cells = tex_tabular_shape(tex)
    assert nrows == 8 and cells[0][4] == "--"
    assert cells[3][5] == r"\textbf{0.700 {\scriptsize [0.650, 0.750]}}"
    vs = table_vs_paper(df, load_paper_numbers(), 1)
    assert "TOY" in vs.splitlines()[0]
    tex_tabular_shape(vs)


def test_toy_tables_show_toy_kid_not_toy_fid(tmp_path):
    """Toy FID stays in summary.csv but not in the tables (it ranks fewer steps as better); toy KID replaces it."""
    df = _constructed()
    df["world"] = "toy"
    df["image_reward"] = float("nan")
    df["toy_adherence"] = [0.5, 0.6, 0.55, 0.7, 0.1, 0.2, 0.3, 0.4]
    df["toy_fid"] = [1700.0 + i for i in range(8)]
    df["toy_kid"] = [0.0012 * (i + 1) for i in range(8)]
    df["toy_kid_ci_low"], df["toy_kid_ci_high"] = df["toy_kid"] - 0.001, df["toy_kid"] + 0.001
    tex = table1(df)
    assert "toy KID" in tex and "toy FID" not in tex and "1700" not in tex
    assert r"0.001 {\scriptsize [0.000, 0.002]}" in tex


def _with_fidelity(world: str) -> pd.DataFrame:
    """`_constructed` with psnr_ref / ssim_ref: the 20-step references have none (compared with themselves)."""
    df = _constructed()
    df["world"] = world
    own = df["row"].str.endswith("b20")
    df["psnr_ref"] = [float("nan"), 30.0, 25.0, 32.0, float("nan"), 28.0, 31.0, 29.0]
    df["psnr_ref_ci_low"], df["psnr_ref_ci_high"] = df["psnr_ref"] - 1, df["psnr_ref"] + 1
    df["ssim_ref"] = [float("nan"), 0.9, 0.8, 0.95, float("nan"), 0.85, 0.9, 0.88]
    df["psnr_ref_n"] = df["ssim_ref_n"] = [0 if o else 16 for o in own]
    return df


@pytest.mark.parametrize("world", ["toy", "paper"])
def test_fidelity_columns_follow_the_quality_columns_with_intervals(world):
    """psnr_ref / ssim_ref appear (the run has them; lpips_ref not) under their own header, with CIs; the reference
    row, compared with itself, prints 'ref.', never nan or inf; Table 1 bolds the best efficient fidelity."""
    df = _with_fidelity(world)
    if world == "toy":
        df["toy_adherence"] = 0.5
    tex = table1(df)
    assert "Fidelity to reference" in tex and "PSNR" in tex and "SSIM" in tex and "LPIPS" not in tex
    ncols, nrows, cells = tex_tabular_shape(tex)
    psnr, ssim = ncols - 2, ncols - 1
    assert [c[psnr] for c in cells[:4]] == ["ref.", r"30.00 {\scriptsize [29.00, 31.00]}",
                                           r"25.00 {\scriptsize [24.00, 26.00]}",
                                           r"\textbf{32.00 {\scriptsize [31.00, 33.00]}}"]
    assert cells[0][ssim] == "ref." and cells[3][ssim] == r"\textbf{0.950}"
    assert not any(c in ("nan", "inf") for row in cells for c in row)
    df["paper_row"] = [None, None, None, "t1/pixart-alpha-512/ilf"] + [None] * 4
    vs = table_vs_paper(df, load_paper_numbers(), 1)
    assert "PSNR" in vs and "32.00" in vs  # beside the paper's '--'
    tex_tabular_shape(vs)


def test_table2_prints_no_change_against_the_reference_for_fidelity():
    """Table 2's '(change)' is for quality; a fidelity value is already relative to the reference."""
    df = _with_fidelity("paper")
    df["table"] = "2"
    df["fid_imagenet"] = [4.5 + i for i in range(8)]
    _, _, cells = tex_tabular_shape(table2(df))
    assert cells[1][-3] == "5.50 (+1.00)"  # FID of A-b12 against its reference A-b20
    assert cells[1][-2:] == [r"30.00 {\scriptsize [29.00, 31.00]}", "0.900"] and cells[0][-2:] == ["ref.", "ref."]


def test_html_pages_set_the_latex_cells_beside_the_paper(summary, tmp_path, capsys):
    """`ilf tables` also writes table{k}.html (the report's pages): the .tex table's cells and emphasis, then the
    paper's printed numbers beside this run's; summary.html holds every row's provenance."""
    from html.parser import HTMLParser

    from ilf.cli import main

    summary.to_csv(tmp_path / "summary.csv", index=False)
    assert main(["tables", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "t")]) == 0
    assert sorted(p.name for p in (tmp_path / "t").glob("*.html")) == sorted(
        [f"table{k}.html" for k in range(1, 7)] + ["summary.html"])

    class Cells(HTMLParser):  # the text of every <td>, per table
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr" and self.tables:
                self.tables[-1].append([])
            elif tag == "td":
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "td":
                self.tables[-1][-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    page = (tmp_path / "t" / "table1.html").read_text()
    parser = Cells()
    parser.feed(page)
    run, vs = ([r for r in t if r] for t in parser.tables)
    _, _, tex = tex_tabular_shape((tmp_path / "t" / "table1.tex").read_text())
    assert len(run) == len(tex) == 4 and run[3][4] == tex[3][4] == "0.59 (1.9x)"
    assert run[3][5] == "89.50 [88.00, 91.00]" and "<strong>89.50 <small>[88.00, 91.00]</small></strong>" in page
    ilf = next(r for r in vs if r[0].startswith("PixArt-alpha w/ ours (pixart-alpha-512"))
    assert ilf[1:3] == ["332", "332"] and ilf[7:9] == ["89.47", "89.50"]  # the paper's number beside this run's
    assert "deadbeef" in (tmp_path / "t" / "summary.html").read_text()  # provenance: the git commit of every row


def test_own_flow_toy_table_is_written_when_rows_name_it(tmp_path):
    """`table: toy_flow` rows make toy_flow.tex / toy_flow.html (no paper table beside them); bold = best efficient."""
    from report_fixtures import write_row

    from ilf.report.html_tables import write_html_tables

    g = "toy-flux"
    rows = [dict(name="f20", table="toy_flow", group=g, label="toy-flux", backbone=g, steps=20, method="baseline",
                 reference_row="f20"),
            dict(name="f12", table="toy_flow", group=g, label="toy-flux", backbone=g, steps=12, method="baseline",
                 reference_row="f20"),
            dict(name="filf", table="toy_flow", group=g, label="toy-flux w/ ours", backbone=g, steps=10, method="ilf",
                 reference_row="f20", feedback=dict(training="toy_flux", iteration=None, feedback_steps="outer:4",
                                                    t_post="rescale", loop_start=2, loop_end=3))]
    write_row(tmp_path, "f20", seconds=[0.4, 0.4], blocks=240, metrics=dict(toy_adherence=0.70))
    write_row(tmp_path, "f12", seconds=[0.25, 0.25], blocks=144, metrics=dict(toy_adherence=0.69, psnr_ref=20.0))
    write_row(tmp_path, "filf", seconds=[0.2, 0.2], blocks=144, metrics=dict(toy_adherence=0.71, psnr_ref=21.0))
    summarize_rows(rows, tmp_path, "toy")
    summary = read_summary(tmp_path / "summary.csv")
    paths = write_tables(summary, load_paper_numbers(), tmp_path / "tables")
    assert "toy_flow.tex" in {p.name for p in paths} and "toy_flow_vs_paper.tex" not in {p.name for p in paths}
    tex = (tmp_path / "tables" / "toy_flow.tex").read_text()
    assert "TOY" in tex and "toy-flux" in tex and "tab:toy_flow" in tex
    ncols, nrows, cells = tex_tabular_shape(tex)
    assert (ncols, nrows) == (6, 3)  # model, steps, blocks, s / img, toy adherence, PSNR
    assert cells[0][4] == "0.700" and cells[2][4] == r"\textbf{0.710}" and cells[0][5] == "ref."
    assert cells[2][3] == "0.20 (2.0x)"
    pages = write_html_tables(summary, load_paper_numbers(), tmp_path / "tables")
    assert "toy_flow.html" in {p.name for p in pages}
    assert "paper's Table" not in (tmp_path / "tables" / "toy_flow.html").read_text()
