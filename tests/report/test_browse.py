"""`ilf browse`: the static image browser of a run (data, links, errors) and the report's galleries, and the
browser in headless Chromium: every image loads, no console error, sorting by a metric difference, paging, zoom."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chromium import check_result, dump_dom, require_chromium, screenshot
from ilf.cli import main
from finished_run import IMAGES, write_fixture_run

CHECK_JS = Path(__file__).parents[1] / "helpers" / "browser_check.js"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    write_fixture_run(root)
    return root


@pytest.fixture(scope="module")
def browser(run_dir) -> Path:
    out = run_dir / "out" / "browse"
    assert main(["browse", "--config", str(run_dir / "config.yaml"), "--out", str(out),
                 "--gallery", str(run_dir / "out" / "gallery"), "--gallery-images", "4"]) == 0
    return out


def read_js(path: Path, head: str, tail: str) -> dict:
    text = path.read_text().strip()
    assert text.startswith(head) and text.endswith(tail), text[:80]
    return json.loads(text[len(head):-len(tail)])


def test_groups_pair_every_row_by_prompt_and_seed(browser):
    index = read_js(browser / "data" / "index.js", "window.ILF_BROWSE_INDEX = ", ";")
    groups = {g["id"]: g for g in index["groups"]}
    assert list(groups) == ["table1/toy-t2i", "table2/toy-c2i", "table4/toy-t2i", "fig8/toy-c2i", "all/toy-c2i",
                            "all/toy-t2i"]
    assert groups["table2/toy-c2i"]["rows"] == ["c2i_b20", "c2i_b5", "c2i_ilf"]
    assert groups["table2/toy-c2i"]["compare"] == ["c2i_ilf", "c2i_b20"]  # ILF against its reference row
    assert index["rows"]["c2i_ilf"]["block_forwards"] == 84 and index["rows"]["c2i_ilf"]["images"] == 30
    g = read_js(browser / groups["table2/toy-c2i"]["file"], "ILF_BROWSE_GROUP(", ");")
    assert len(g["items"]) == IMAGES["c2i_b20"]
    assert g["metrics"] == ["toy_class_accuracy", "psnr_ref"]  # psnr_ref: a metric no code names, read generically
    keys = [it[0] for it in g["items"]]
    ilf, base = g["cells"]["c2i_ilf"], g["cells"]["c2i_b20"]
    worst = keys.index("p3|3000")  # digit 3, sample 0: same prompt and seed in every row
    assert ilf["m"]["psnr_ref"][worst] == 10.0 and ilf["m"]["toy_class_accuracy"][worst] == 0.0
    assert ilf["img"][worst] == "img/c2i_ilf/images/000003.png" and base["img"][worst] == "img/c2i_b20/images/000003.png"
    assert ilf["img"][30:] == [None] * 15 and ilf["sec"][30:] == [None] * 15  # ILF made 30 of the 45 images
    assert base["bf"][0] == 280 and abs(base["sec"][3] - 0.013) < 1e-12
    # the shared row shows its owner's images through one link per image folder
    t4 = read_js(browser / groups["table4/toy-t2i"]["file"], "ILF_BROWSE_GROUP(", ");")
    assert t4["cells"]["t2i_b20_again"]["img"][0] == "img/t2i_b20/images/000000.png"
    link = browser / "img" / "t2i_b20"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert (browser / ilf["img"][worst]).read_bytes() == (browser.parent / "rows/c2i_ilf/images/000003.png").read_bytes()


def test_copy_images_makes_a_folder_that_moves(run_dir, tmp_path):
    out = tmp_path / "b"
    assert main(["browse", "--config", str(run_dir / "config.yaml"), "--out", str(out), "--copy-images"]) == 0
    png = out / "img" / "c2i_b5" / "images" / "000007.png"
    assert png.is_file() and not png.is_symlink() and not (out / "img" / "c2i_b5").is_symlink()
    assert png.stat().st_ino == (run_dir / "out/rows/c2i_b5/images/000007.png").stat().st_ino  # a hard link
    moved = shutil.move(str(out), str(tmp_path / "moved"))
    assert sum(1 for _ in Path(moved, "img").rglob("*.png")) == sum(IMAGES.values())


def test_gallery_holds_the_first_images_of_each_row_per_tag(browser, run_dir):
    gallery = run_dir / "out" / "gallery"
    labels = json.loads((gallery / "labels.json").read_text())
    files = sorted(str(p.relative_to(gallery)) for p in gallery.rglob("*.png"))
    assert files == sorted(labels)
    assert [f for f in files if f.startswith("table2/c2i_ilf/")] == [f"table2/c2i_ilf/{i:06d}.png" for i in range(4)]
    assert {f.split("/")[0] for f in files if "/c2i_b20/" in f} == {"table2", "fig8"}  # under each of its tags
    lab = labels["table2/c2i_ilf/000003.png"]
    assert lab["image"] == "000003" and lab["method"] == "ilf" and lab["steps"] == "5"
    assert lab["block forwards"] == "84" and lab["psnr_ref"] == "10" and lab["toy_class_accuracy"] == "0"
    assert all(isinstance(v, str) and "{" not in v for d in labels.values() for v in d.values())


def test_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "b"
    cfg = run_dir / "config.yaml"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["browse", "--config", str(cfg), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ilf browse: error:") and "is not a folder `ilf browse` wrote" in err and "\n" not in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    gen = run_dir / "out/rows/c2i_cache/generation.jsonl"
    saved = gen.read_text()
    try:
        gen.unlink()
        assert main(["browse", "--config", str(cfg), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ilf browse: error: row 'c2i_cache': no generation records") and "\n" not in err
        assert not out.exists() and not list(tmp_path.glob(".b.*"))
    finally:
        gen.write_text(saved)
    with pytest.raises(SystemExit) as exc:
        main(["browse", "--config", str(cfg), "--out", str(out), "--gallery", str(tmp_path / "g"), "--gallery-images", "0"])
    assert exc.value.code == 2 and not (tmp_path / "g").exists()


def _check_page(folder: Path, name: str, want: dict | None = None) -> Path:
    """A copy of index.html that loads tests/helpers/browser_check.js before the browser's own scripts."""
    shutil.copyfile(CHECK_JS, folder / "ilf_check.js")
    page = (folder / "index.html").read_text()
    setup = f"<script>window.ILF_CHECK = {json.dumps(want or {})};</script><script src=\"ilf_check.js\"></script>\n"
    page = page.replace('<script src="data/index.js">', setup + '<script src="data/index.js">', 1)
    (folder / name).write_text(page)
    return folder / name


def assert_browser_works(result: dict, console: list[str]) -> None:
    """What every browser must show: no error, every image of every group and page loaded, sorting, paging, zoom."""
    assert "fatal" not in result, result.get("fatal")
    assert result["errors"] == [] and console == [], (result["errors"], console)
    for gid, g in result["groups"].items():
        assert g["broken"] == [] and g["count"] > 0, gid
        assert g["shown"] == min(g["items"], 20) and g["columns"] == g["rows"], gid  # 20 prompts per page
    for sort in result["sorts"]:
        for order, ok in (("asc", lambda x, y: x <= y), ("desc", lambda x, y: x >= y)):
            values = [r["sort"] for r in sort[order]]
            known = [v for v in values if v is not None]
            assert values[:len(known)] == known, f"{order}: missing values must come last"
            assert all(ok(x, y) for x, y in zip(known, known[1:])), (order, known)
        assert "sorted by" in sort["status"] and "metric=" in sort["hash"]
    pages = result["paging"]["pages"]
    keys = [k for p in pages for k in p["keys"]]
    assert len(keys) == len(set(keys)) == result["paging"]["items"]  # every item once, across all pages
    assert len(pages) == -(-result["paging"]["items"] // 10) and all(len(p["keys"]) == 10 for p in pages[:-1])
    assert pages[0]["info"] == f"page 1 of {len(pages)}" and result["paging"]["backToFirst"] == pages[0]["info"]
    assert all(p["broken"] == [] and p["images"] > 0 for p in pages)
    zoom = result["zoom"]
    assert zoom["first"]["src"] == zoom["clicked"] and zoom["first"]["width"] > 0 and zoom["closed"]
    assert zoom["first"]["shownWidth"] >= 4 * zoom["first"]["width"] or zoom["first"]["shownWidth"] >= 512


def test_browser_in_chromium(browser, tmp_path):
    require_chromium()
    sorts = [{"group": "table2/toy-c2i", "metric": "psnr_ref"},  # the row picked first, and no row to subtract
             {"group": "table2/toy-c2i", "metric": "toy_class_accuracy", "b": "c2i_b20"}]
    page = _check_page(browser, "check.html", {"sorts": sorts})
    dom, console = dump_dom(page.as_uri())
    result = check_result(dom)
    assert_browser_works(result, console)
    assert set(result["groups"]) == {"table1/toy-t2i", "table2/toy-c2i", "table4/toy-t2i", "fig8/toy-c2i",
                                     "all/toy-c2i", "all/toy-t2i"}
    # "where does ILF lose most PSNR to the baseline": ILF's psnr_ref against the baseline's image, lowest first (the
    # baseline has no psnr_ref of its own, so nothing is subtracted): digit 3's first sample; ILF has no image for
    # 15 of the 45 prompts and seeds, so those sort last
    psnr, acc = result["sorts"]
    assert (psnr["a"], psnr["b"], psnr["defaultOrder"]) == ("c2i_ilf", "", "asc")
    assert psnr["asc"][0] == {"key": "p3|3000", "sort": 10.0}
    assert [r["sort"] for r in psnr["asc"]][-15:] == [None] * 15 and psnr["desc"][-1]["sort"] is None
    # "where is ILF's digit wrong and the baseline's right": accuracy of ILF minus the 20-step baseline
    assert (acc["a"], acc["b"]) == ("c2i_ilf", "c2i_b20")
    assert acc["asc"][0] == {"key": "p3|3000", "sort": -1.0} and acc["asc"][1]["sort"] == 0.0
    assert result["paging"]["group"] == "table2/toy-c2i" and len(result["paging"]["pages"]) == 5  # 45 items
    assert result["zoom"]["next"] != result["zoom"]["clicked"]  # the arrow key shows the next row's image
    shot = screenshot(f"{(browser / 'index.html').as_uri()}#group=table2/toy-c2i&metric=psnr_ref",
                      tmp_path / "browse.png")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (900, 1400) and pixels.std() > 10  # a page with images, not a blank one


@pytest.mark.skipif(not os.environ.get("ILF_BROWSE_DIR"),
                    reason="set ILF_BROWSE_DIR to a workflow run's browse/ folder to check it in Chromium")
def test_run_browser_in_chromium(tmp_path):
    """CI: the browser the CI DAG built (ILF_BROWSE_DIR=results/ci/browse), checked like the fixture's."""
    require_chromium()
    folder = tmp_path / "browse"
    shutil.copytree(os.environ["ILF_BROWSE_DIR"], folder, symlinks=True)
    for link in (folder / "img").iterdir():  # the copy's links point where the original's do
        target = (Path(os.environ["ILF_BROWSE_DIR"]) / "img" / os.readlink(link)).resolve()
        link.unlink()
        link.symlink_to(target, target_is_directory=True)
    dom, console = dump_dom(_check_page(folder, "check.html").as_uri(), budget_ms=120000, timeout=600)
    assert_browser_works(check_result(dom), console)
    screenshot((folder / "index.html").as_uri(), tmp_path / "browse.png")
