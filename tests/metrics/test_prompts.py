"""Prompt sets of the metrics: each metric scores the images of its own prompt set when a row folder holds several
(paper Sec. 4.1); DrawBench read from the cache, fetched with its source recorded."""
from pathlib import Path

import pytest

from ilf.metrics import group_by_prompt_set


def _records(*sets):
    return [{"index": i, "prompt_set": s} for i, s in enumerate(sets)]


def test_two_sets_route_metrics():
    recs = _records("imagereward-benchmark", "mjhq-30k", "mjhq-30k")
    groups = group_by_prompt_set(["image_reward", "clip_score", "fid_mjhq", "clipiqa_noisy"], recs)
    assert groups == {"imagereward-benchmark": ["image_reward", "clipiqa_noisy"], "mjhq-30k": ["clip_score", "fid_mjhq"]}


def test_single_set_uses_every_image():
    assert group_by_prompt_set(["toy_fid", "toy_adherence"], _records("toy-captions", "toy-captions")) == {
        None: ["toy_fid", "toy_adherence"]}


def test_missing_set_is_an_error():
    with pytest.raises(ValueError, match="mjhq-30k"):
        group_by_prompt_set(["fid_mjhq"], _records("imagereward-benchmark", "toy-captions"))


# ------------------------------------------------------------------------------------------------ DrawBench
FIXTURE = Path(__file__).parents[1] / "fixtures" / "drawbench_sample.csv"  # a few rows in the sheet's CSV format


def _cache_with_drawbench(tmp_path, text: str | None = None) -> Path:
    from ilf.metrics.assets import asset_location

    path = asset_location("drawbench-prompts", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(FIXTURE.read_text() if text is None else text)
    return tmp_path


def test_drawbench_is_read_from_the_cache_in_file_order(tmp_path, monkeypatch):
    from ilf.harness.prompts import TASK_OF_SET, load_prompt_set
    from ilf.metrics.prompts import drawbench_prompts

    cache = _cache_with_drawbench(tmp_path)
    rows = drawbench_prompts(cache)
    assert [r["id"] for r in rows] == ["drawbench-000", "drawbench-001", "drawbench-002", "drawbench-003"]  # no blank
    assert rows[3] == {"id": "drawbench-003", "prompt": "A storefront with 'Hello World' written on it, at night.",
                       "category": "Text"}
    monkeypatch.setenv("ILF_CACHE", str(cache))
    items = load_prompt_set("drawbench", 2)  # what a workflow row generates from
    assert [(i.prompt_id, i.prompt, i.class_label) for i in items] == [
        ("drawbench-000", "A red colored car.", None), ("drawbench-001", "A black apple and a green backpack.", None)]
    assert TASK_OF_SET["drawbench"] == "t2i"


def test_drawbench_missing_is_the_offline_error_and_a_wrong_file_is_named(tmp_path, monkeypatch):
    from ilf.errors import MissingAssetError
    from ilf.harness.prompts import load_prompt_set
    from ilf.metrics.prompts import drawbench_prompts

    with pytest.raises(MissingAssetError, match=r"ilf prefetch --metric-assets drawbench-prompts"):
        drawbench_prompts(tmp_path / "empty")
    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MissingAssetError, match="drawbench-prompts"):
        load_prompt_set("drawbench")
    cache = _cache_with_drawbench(tmp_path / "bad", "prompt,category\nA red colored car.,Colors\n")
    with pytest.raises(ValueError, match="'Prompts'"):
        drawbench_prompts(cache)


def test_prefetch_fetches_the_prompt_sets_a_config_generates_from():
    from ilf.metrics.assets import METRIC_ASSETS, assets_for_prompt_sets

    assert assets_for_prompt_sets(["drawbench", "toy-captions", "mjhq-30k"]) == ["drawbench-prompts", "mjhq30k-meta"]
    assert "docs.google.com/spreadsheets" in METRIC_ASSETS["drawbench-prompts"]["how"]  # the source, recorded


def test_drawbench_fetch_checks_200_prompts_and_records_its_source(tmp_path, monkeypatch):
    """The fetch (here from a local file: no internet) keeps the CSV only when it holds DrawBench's 200 prompts,
    and writes the URL, date and sha256 beside it."""
    import hashlib
    import json

    import ilf.metrics.assets as assets

    lines = ["Prompts,Category"] + [f"Prompt number {i}.,Colors" for i in range(200)]
    (tmp_path / "full.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(assets, "DRAWBENCH_URL", (tmp_path / "full.csv").as_uri())
    assets.fetch_metric_assets(["drawbench-prompts"], tmp_path / "cache")
    path = assets.asset_location("drawbench-prompts", tmp_path / "cache")
    source = json.loads(path.with_suffix(".source.json").read_text())
    assert source["url"] == (tmp_path / "full.csv").as_uri() and source["prompts"] == 200
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and source["date"]
    monkeypatch.setattr(assets, "DRAWBENCH_URL", FIXTURE.as_uri())
    with pytest.raises(ValueError, match="gave 4 prompts, not DrawBench's 200"):
        assets.fetch_metric_assets(["drawbench-prompts"], tmp_path / "other")
    assert not assets.asset_location("drawbench-prompts", tmp_path / "other").exists()
