"""Several rows per generation / metrics process (`rows_per_job`, ilf.harness.generation_jobs.generation_jobs).

A toy process spends ~10 s importing torch, diffusers and transformers before it samples; the default job
therefore groups rows. Grouping must not change a single image or score, and must cover every row once.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from ilf.cli import main
from ilf.harness.generation_jobs import generation_jobs
from ilf.harness.workflow_config import (REPO_ROOT, generation_rows, get_row, load_workflow_config, metrics_for_dir,
                                         resolve)
from ilf.io import read_jsonl


@pytest.mark.parametrize("k", [1, 2, 5, 8, 100])
def test_groups_cover_every_single_shard_owner_row_once(k):
    cfg = load_workflow_config(REPO_ROOT / "configs/toy.yaml", {"rows_per_job": k})
    jobs = generation_jobs(cfg)
    if k == 1:
        assert jobs == {}  # the default (paper world): one job per row
        return
    grouped = [r for rows in jobs.values() for r in rows]
    owners = [r["name"] for r in generation_rows(cfg)]
    assert sorted(grouped) == sorted(owners) and len(set(grouped)) == len(grouped)
    for name, rows in jobs.items():
        assert 1 <= len(rows) <= k and name.isidentifier(), (name, rows)
        members = [get_row(cfg, r) for r in rows]
        assert len({m["backbone"] for m in members}) == 1  # one pipeline class per process
        assert len({(m["method"] == "ilf") for m in members}) == 1  # untrained rows never wait for training
        assert len({tuple(metrics_for_dir(cfg, r)) for r in rows}) == 1  # one `ilf metrics --metrics` list


def test_sharded_rows_keep_their_own_jobs():
    raw = yaml.safe_load((REPO_ROOT / "configs/toy.yaml").read_text())
    raw["rows_per_job"] = 8
    before = {r for rows in generation_jobs(resolve(raw)).values() for r in rows}
    raw["rows"][0]["shards"] = 2
    after = {r for rows in generation_jobs(resolve(raw)).values() for r in rows}
    assert before - after == {raw["rows"][0]["name"]}


def _config(tmp_path: Path, out: str) -> Path:
    rows = [
        {"name": "base", "table": "table2", "steps": 3, "method": "baseline"},
        {"name": "cache", "table": "table2", "steps": 4, "method": "cache",
         "cache": {"location": "inner", "num_cached": 4, "interval": 2}},
        {"name": "base-again", "table": "table3", "steps": 3, "method": "baseline"},  # shares base's images
    ]
    cfg = {"name": "t", "world": "toy", "out_dir": str(tmp_path / out), "seed": 3, "device": "cpu", "rows_per_job": 4,
           "backbones": {"toy-c2i": {"task": "c2i", "num_blocks": 14, "resolution": 32, "batch_size": 2}},
           "defaults": {"backbone": "toy-c2i", "prompts": "toy-digits", "num_prompts": 3, "images_per_prompt": 1,
                        "metrics": ["toy_kid", "toy_class_accuracy"]},
           "rows": rows}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _digest(row_dir: Path) -> dict[int, tuple[int, str]]:
    out = {}
    for rec in read_jsonl(row_dir / "generation.jsonl"):
        out[rec["index"]] = (rec["seed"], hashlib.sha256((row_dir / rec["image_path"]).read_bytes()).hexdigest())
    return out


def test_one_process_for_several_rows_makes_the_same_images_and_scores(tmp_path, capsys):
    together, alone = _config(tmp_path, "together"), _config(tmp_path, "alone")
    assert main(["generate", "--config", str(together), "--row", "base", "--row", "cache", "--row", "base-again",
                 "--warmup", "0"]) == 0
    for row in ("cache", "base"):  # the other order, one process per row
        assert main(["generate", "--config", str(alone), "--row", row, "--warmup", "0"]) == 0
    for row in ("base", "cache"):
        a, b = tmp_path / "together/rows" / row, tmp_path / "alone/rows" / row
        assert _digest(a) == _digest(b) and len(_digest(a)) == 3
    assert not (tmp_path / "together/rows/base-again").exists()  # generated once, in its owner's folder
    dirs = [str(tmp_path / "together/rows" / r) for r in ("base", "cache")]
    assert main(["metrics", "--generation-dir", dirs[0], "--generation-dir", dirs[1],
                 "--metrics", "toy_kid,toy_class_accuracy", "--device", "cpu"]) == 0
    for row in ("base", "cache"):
        assert main(["metrics", "--generation-dir", str(tmp_path / "alone/rows" / row),
                     "--metrics", "toy_kid,toy_class_accuracy", "--device", "cpu"]) == 0
        a, b = (json.loads((tmp_path / w / "rows" / row / "metrics_summary.json").read_text())["metrics"]
                for w in ("together", "alone"))
        assert a == b and set(a) == {"toy_kid", "toy_class_accuracy"}


def test_several_rows_refuse_shard_arguments(tmp_path, capsys):
    cfg = _config(tmp_path, "x")
    assert main(["generate", "--config", str(cfg), "--row", "base", "--row", "cache", "--shard", "0",
                 "--num-shards", "2"]) == 2
    assert "one row with --shard" in capsys.readouterr().err
    assert main(["generate", "--config", str(cfg), "--row", "base", "--row", "nope"]) == 2  # checked before any image
    assert not (tmp_path / "x/rows/base").exists()
