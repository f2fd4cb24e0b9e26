"""Peer rows in the workflow: one list of peers (ilf.peers.PEERS) for the schema, the config loader and generate;
dynamic rows generate one image per call and record each image's own count; the summary takes the mean."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ilf.errors import ILFConfigError
from ilf.harness.generate import METHODS, generate_row
from ilf.harness.workflow_config import METHODS as CONFIG_METHODS, SCHEMA_PATH, get_row, resolve
from ilf.io import read_jsonl
from ilf.peers import PEERS
from ilf.report.common import METHODS as REPORT_METHODS
from tiny import tiny_pipeline


def config(tmp_path: Path, **row) -> dict:
    base = {"name": "r", "table": "extra", "backbone": "toy-c2i", "steps": 6, "method": "fbcache",
            "prompts": "toy-digits", "num_prompts": 3, "images_per_prompt": 2, "metrics": ["toy_fid"],
            "guidance_scale": 2.0}
    base.update(row)
    return resolve({"name": "t", "world": "toy", "out_dir": str(tmp_path / "out"), "seed": 7,
                    "backbones": {"toy-c2i": {"task": "c2i", "num_blocks": 6, "resolution": 8, "batch_size": 4}},
                    "rows": [base]})


def test_one_list_of_peers():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["definitions"]["row"]["properties"]
    assert set(schema["method"]["enum"]) == {"baseline", "cache", "ilf", *PEERS}
    assert set(PEERS) <= set(schema)  # each peer's settings key
    assert set(CONFIG_METHODS) == set(METHODS) == set(REPORT_METHODS) == {"baseline", "cache", "ilf", *PEERS}


def test_peer_rows_resolve_with_their_budget(tmp_path):
    static = get_row(config(tmp_path, method="dbcache", dbcache={"compute_steps": 3}), "r")
    assert static["block_forwards_analytic"] == 6 + 3 * 5 and static["batch_size"] == 4
    assert static["dbcache"]["policy"] == "static" and static["fbcache"] is None  # settings filled, others cleared
    dynamic = get_row(config(tmp_path, fbcache={"threshold": 0.2}), "r")
    assert dynamic["block_forwards_analytic"] is None and dynamic["batch_size"] == 1  # one image per call
    with pytest.raises(ILFConfigError, match=r"rows\[r\]\.batch_size"):
        config(tmp_path, batch_size=4)
    with pytest.raises(ILFConfigError, match=r"rows\[r\]\.fbcache\.thresh"):
        config(tmp_path, fbcache={"thresh": 0.2})
    with pytest.raises(ILFConfigError, match=r"rows\[r\]\.magcache\.num_inference_steps"):
        config(tmp_path, method="magcache", magcache={"num_inference_steps": 20})


def test_dynamic_row_records_per_image_counts_and_magcache_calibrates(tmp_path):
    for method, settings in (("fbcache", {"threshold": 0.2}), ("magcache", {"threshold": 0.5})):
        row = get_row(config(tmp_path, name=method, method=method, **{method: settings}), method)
        out = generate_row(row, device="cpu", warmup=0, progress=False,
                           pipeline_factory=lambda r, d: tiny_pipeline("dit", num_layers=6))
        recs = read_jsonl(out)
        assert len(recs) == 6 and all(r["block_forwards_analytic"] == "dynamic" and r["batch_size"] == 1 for r in recs)
        counts = [r["block_forwards_measured"] for r in recs]
        assert all(6 <= c <= 36 for c in counts)
        # FLOPs from the counted calls: the blocks that computed, plus every model call's embeddings and head
        from ilf.flops import flops_of_block_forwards, model_flops

        mf = model_flops(tiny_pipeline("dit", num_layers=6).transformer, 16)  # 8 px, tiny VAE x1, patch 2
        assert [r["flops_per_image"] for r in recs] == [flops_of_block_forwards(c, mf, row["steps"]) for c in counts]
        from ilf.report.summarize import _block_forwards

        assert _block_forwards(method, recs) == ("dynamic", sum(counts) / 6 if sum(counts) % 6 else sum(counts) // 6)


def test_static_peer_row_is_checked_against_its_budget(tmp_path):
    row = get_row(config(tmp_path, method="taylorseer", taylorseer={"cache_interval": 2, "disable_cache_before_step": 2}), "r")
    out = generate_row(row, device="cpu", warmup=0, progress=False,
                       pipeline_factory=lambda r, d: tiny_pipeline("dit", num_layers=6))
    assert {r["block_forwards_measured"] for r in read_jsonl(out)} == {row["block_forwards_analytic"]} == {6 * 4}
    assert {(r["true_cfg_scale"], r["negative_prompt"]) for r in read_jsonl(out)} == {(None, None)}  # batched CFG


def test_fastercache_row_without_guidance_is_refused(tmp_path):
    with pytest.raises(ILFConfigError, match=r"rows\[r\]\.guidance_scale=1\.0 .*> 1 for fastercache"):
        config(tmp_path, method="fastercache", guidance_scale=1.0)
    assert get_row(config(tmp_path, method="fastercache"), "r")["guidance_scale"] == 2.0
