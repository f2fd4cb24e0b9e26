"""`snakemake --report` of a finished run (the fixture of tests/helpers/finished_run.py, its tables, figures, browser and
galleries made by the commands the report rules run): every table, figure, gallery image and provenance file is in
the report under its category, with a caption naming its rows, steps, block forwards and metrics; the .html report
renders in headless Chromium without an error."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chromium import check_result, dump_dom, require_chromium, screenshot
from ilf.cli import main
from ilf.harness.workflow_config import REPO_ROOT
from finished_run import IMAGES, write_fixture_run

pytestmark = pytest.mark.slow
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run: stored rows, then what the summarize, tables, figures and browse rules run on them."""
    root = tmp_path_factory.mktemp("run")
    cfg = write_fixture_run(root)
    out = root / "out"
    for argv in (["summarize", "--config", cfg], ["tables", "--summary", out / "summary.csv", "--out", out],
                 ["figures", "--summary", out / "summary.csv", "--out", out / "figures", "--rows-dir", out / "rows"],
                 ["browse", "--config", cfg, "--out", out / "browse", "--gallery", out / "report/gallery"]):
        assert main([str(a) for a in argv]) == 0, argv
    return root


def make_report(run: Path, name: str) -> Path:
    path = run / name
    res = subprocess.run([SNAKEMAKE, "--report", str(path), "--configfile", str(run / "config.yaml"), "--nolock"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and path.is_file(), (res.stdout + res.stderr)[-4000:]
    return path


def report_data(page: str) -> tuple[dict, dict]:
    """The report's results (path -> name, caption, labels, ...) and categories (name -> subcategory -> paths)."""
    return script_var(page, "results", "results"), script_var(page, "categories", "categories")


def script_var(page: str, script_id: str, name: str):
    """The JSON of `var <name> = ...;` in the report's <script id=<script_id>>."""
    return json.loads(re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', page, re.S).group(1))


def test_report_zip_has_every_table_figure_gallery_and_provenance(run):
    with zipfile.ZipFile(make_report(run, "report.zip")) as z:
        names = z.namelist()
        page = z.read("report/report.html").decode()
    results, categories = report_data(page)
    by_name: dict[str, list[dict]] = {}
    for path, res in results.items():
        by_name.setdefault(Path(path).name, []).append({**res, "path": path})
    assert {"Table 1", "Table 2", "Table 4", "Fig. 7", "Fig. 8", "Pareto front", "Qualitative grids",
            "Provenance"} <= set(categories)
    # the tables (HTML beside the paper's numbers), each in its table's category with its rows in the caption
    for k in (1, 2, 4):
        (table,) = by_name[f"table{k}.html"]
        assert table["path"] in categories[f"Table {k}"]["table"]
        assert any(n.endswith(f"/table{k}.html") for n in names)
    caption = by_name["table2.html"][0]["caption"]
    assert "c2i_ilf (ILF): ilf, 5 steps, 84 block forwards" in caption and "toy_class_accuracy" in caption
    # every figure, captioned with its rows and quality metric
    for fig in ("fig7_training_iterations", "fig8_quality_vs_time", "pareto_block_forwards", "qualitative_toy-c2i",
                "qualitative_toy-t2i"):
        assert len(by_name[f"{fig}.png"]) == 1, fig
    assert "c2i_b5 (baseline 5): baseline, 5 steps, 70 block forwards" in by_name["fig8_quality_vs_time.png"][0]["caption"]
    assert "toy class acc. (toy_class_accuracy)" in by_name["fig8_quality_vs_time.png"][0]["caption"]
    # per-row galleries: the first 8 images of every row under each of its tags, labelled per image
    gallery = [r for r in results.values() if r["job_properties"]["rule"] == "browse" and r["name"].endswith(".png")]
    tags = {"c2i_b20": 2, "c2i_b5": 2, "c2i_cache": 1, "c2i_ilf": 2, "t2i_b20": 1, "t2i_b20_again": 1, "t2i_ilf": 1}
    owner = {"t2i_b20_again": "t2i_b20"}
    assert len(gallery) == sum(n * min(8, IMAGES[owner.get(r, r)]) for r, n in tags.items())
    assert sorted(categories["Table 2"]) == ["c2i_b20", "c2i_b5", "c2i_ilf", "table"]
    ilf = [results[p] for p in categories["Table 2"]["c2i_ilf"]]
    three = next(r for r in ilf if r["labels"]["image"] == "000003")
    assert three["labels"]["psnr_ref"] == "10" and three["labels"]["block forwards"] == "84"
    assert "c2i_ilf" in three["caption"] and "metrics.jsonl" in three["caption"]
    # provenance: the summary page and the resolved config
    assert set(categories["Provenance"]) == {"summary", "config"}
    assert "toy world" in script_var(page, "workflow-desc", "workflow_desc")


# Records the page's errors (uncaught exceptions, console.error, resources that fail to load) from its first script on,
# and writes them into <pre id="ilf-errors"> once the page has loaded and run.
CAPTURE = """<script>
window.ILF_ERRORS = [];
addEventListener("error", (e) => ILF_ERRORS.push(String(e.message || (e.target && (e.target.src || e.target.href)))), true);
const ilfConsoleError = console.error;
console.error = (...a) => { ILF_ERRORS.push(a.join(" ")); ilfConsoleError(...a); };
addEventListener("load", () => setTimeout(() => { const p = document.createElement("pre"); p.id = "ilf-errors";
  p.textContent = JSON.stringify(ILF_ERRORS); document.body.append(p); }, 3000));
</script>"""
# Snakemake's report template inlines Tailwind's browser build, which says this once (a notice, not an error).
TAILWIND_NOTICE = "cdn.tailwindcss.com should not be used in production"


def test_html_report_renders_in_chromium(run, tmp_path):
    report = make_report(run, "report.html")
    require_chromium()
    page = tmp_path / "report.html"
    page.write_text(report.read_text().replace("<head>", "<head>" + CAPTURE, 1))
    dom, console = dump_dom(page.as_uri(), budget_ms=20000)
    assert check_result(dom, "ilf-errors") == []
    assert [c for c in console if TAILWIND_NOTICE not in c] == [], console
    for text in ("Table 2", "Fig. 8", "Provenance"):  # the report's menu, rendered by its scripts
        assert text in dom, text
    screenshot(report.as_uri(), tmp_path / "report.png")
    for page in sorted((run / "out").glob("*.html")):  # the table and summary pages of the report
        dom, console = dump_dom(page.as_uri(), budget_ms=2000)
        assert console == [] and "<table" in dom, page
