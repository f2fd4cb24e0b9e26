"""Records, summaries, bootstrap, toy dispatch and the `ilf metrics` command (the metrics record)."""
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest

from ilf.metrics import MetricOptions, compute_row_metrics
from ilf.metrics.assets import METRIC_ASSETS, assets_for_metrics, fetch_metric_assets
from ilf.metrics.bootstrap import bootstrap_ci
from ilf.metrics.tiny import tiny_feature_extractor, tiny_open_clip, write_random_images


def _make_row(row_dir, n=6, prompts=True, labels=False):
    paths = write_random_images(row_dir / "images", n, size=32, seed=5)
    with open(row_dir / "generation.jsonl", "w") as fh:
        for i, p in enumerate(paths):
            fh.write(json.dumps({"row": "r1", "index": i, "prompt_id": f"p{i % 2}", "seed": 100 + i,
                                 "prompt": "a red car" if prompts else None,
                                 "class_label": (i % 3) if labels else None, "sample_index": i // 2,
                                 "image_path": f"images/{p.name}", "config_hash": "abc"}) + "\n")


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    v = np.random.default_rng(0).normal(5.0, 1.0, 200)
    a, b = bootstrap_ci(v, seed=3), bootstrap_ci(v, seed=3)
    assert a == b and a[0] < v.mean() < a[1] and a[1] - a[0] < 0.5
    assert bootstrap_ci(v, seed=4) != a
    g = [i % 10 for i in range(200)]
    lo, hi = bootstrap_ci(v, groups=g, seed=0)
    assert lo < np.mean([v[np.array(g) == k].mean() for k in range(10)]) < hi


@pytest.fixture
def toy_module(monkeypatch):
    calls = {}
    mod = types.ModuleType("ilf.toy.metrics")

    def toy_fid(image_paths, task, reference=None):
        calls["fid"] = (len(image_paths), task, reference)
        return 12.5, len(image_paths)

    mod.toy_fid = toy_fid
    mod.toy_adherence = lambda paths, captions: np.linspace(0, 1, len(paths))
    mod.toy_class_accuracy = lambda paths, labels: np.array([1.0 if l == 0 else 0.0 for l in labels])
    monkeypatch.setitem(sys.modules, "ilf.toy.metrics", mod)
    return calls


def test_toy_dispatch_and_record_files(tmp_path, toy_module):
    _make_row(tmp_path, labels=True)
    out = compute_row_metrics(tmp_path, "toy_fid,toy_adherence,toy_class_accuracy")
    assert toy_module["fid"] == (6, "c2i", None)
    m = out["metrics"]
    assert m["toy_fid"] == {"value": 12.5, "ci_low": None, "ci_high": None, "n": 6, "reference": None}
    assert m["toy_adherence"]["value"] == pytest.approx(0.5) and m["toy_adherence"]["n"] == 6
    assert m["toy_class_accuracy"]["value"] == pytest.approx(2 / 6)
    assert m["toy_adherence"]["ci_low"] <= 0.5 <= m["toy_adherence"]["ci_high"]
    df = pd.read_json(tmp_path / "metrics.jsonl", lines=True)
    assert list(df.columns[:5]) == ["row", "index", "prompt_id", "seed", "image_path"]
    assert {"toy_adherence", "toy_class_accuracy"} <= set(df.columns) and "toy_fid" not in df.columns
    prov = json.loads((tmp_path / "metrics_summary.json").read_text())["provenance"]
    assert {"config_hash", "git_commit", "versions", "device", "date"} <= set(prov)


def test_paper_metrics_with_injected_networks_and_merge(tmp_path, toy_module):
    from ilf.metrics.fid import make_reference_stats

    _make_row(tmp_path)
    write_random_images(tmp_path / "ref", 8, seed=7)
    fx = tiny_feature_extractor()
    make_reference_stats("toyref_32", tmp_path / "ref", cache_dir=tmp_path / "cache", feature_extractor=fx)
    model, pre, tok = tiny_open_clip()
    opts = MetricOptions(device="cpu", cache_dir=tmp_path / "cache", fid_ref="toyref_32",
                         inject={"clip_score": dict(model=model, preprocess=pre, tokenizer=tok),
                                 "fid": dict(feature_extractor=fx)})
    compute_row_metrics(tmp_path, "clip_score", opts)
    out = compute_row_metrics(tmp_path, ["fid_mjhq"], opts)   # second call merges
    assert set(out["metrics"]) == {"clip_score", "fid_mjhq"}
    assert out["metrics"]["fid_mjhq"]["reference"] == "toyref_32_clean_custom_na"
    assert out["metrics"]["fid_mjhq"]["n"] == 6 and out["metrics"]["fid_mjhq"]["ci_low"] is None
    assert out["provenance"]["reference_stats"] == {"fid_mjhq": "toyref_32_clean_custom_na"}
    df = pd.read_json(tmp_path / "metrics.jsonl", lines=True)
    assert out["metrics"]["clip_score"]["value"] == pytest.approx(df["clip_score"].mean())


def test_cli_errors_are_clear(tmp_path, toy_module, capsys):
    from ilf.cli import main

    _make_row(tmp_path, prompts=False)
    assert main(["metrics", "--generation-dir", str(tmp_path), "--metrics", "nonsense"]) == 2
    assert "metrics='nonsense' is not allowed" in capsys.readouterr().err
    assert main(["metrics", "--generation-dir", str(tmp_path), "--metrics", "toy_adherence"]) == 2
    assert "needs 'prompt'" in capsys.readouterr().err
    assert main(["metrics", "--generation-dir", str(tmp_path / "nope"), "--metrics", "toy_fid"]) == 2
    assert main(["metrics", "--generation-dir", str(tmp_path), "--metrics", "toy_fid"]) == 0


def test_cli_offline_error_names_prefetch(tmp_path, monkeypatch, capsys):
    from ilf.cli import main

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "empty_cache"))
    _make_row(tmp_path)
    assert main(["metrics", "--generation-dir", str(tmp_path), "--metrics", "clipiqa_good"]) == 2
    err = capsys.readouterr().err
    assert "clipiqa-rn50" in err and "ilf prefetch --metric-assets clipiqa-rn50" in err


def test_asset_table_is_complete(tmp_path):
    names = assets_for_metrics(["image_reward", "clip_score", "clipiqa_good", "fid_mjhq", "fid_imagenet", "toy_fid"])
    assert set(names) <= set(METRIC_ASSETS)
    assert {"imagereward-prompts", "open_clip:ViT-L-14:openai", "fid-stats:imagenet_train_256"} <= set(names)
    for entry in METRIC_ASSETS.values():
        assert {"what", "where", "how"} <= set(entry)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        fetch_metric_assets(["fid-stats:imagenet_train_256"], tmp_path)


@pytest.mark.parametrize("how,with_sha256", [(how, True) for how in ("truncated", "empty", "other_image", "missing")]
                         + [(how, False) for how in ("truncated", "empty", "missing")])  # other image: sha256 only
def test_cli_refuses_a_damaged_image_in_one_line_naming_it(tmp_path, toy_module, capsys, how, with_sha256):
    """A recorded image that is cut short, empty, another image (sha256 records only) or gone: `ilf metrics`
    prints one line naming the file, exits 2 and writes nothing, for any of the rows it was given."""
    import hashlib

    from ilf.cli import main

    good, bad = tmp_path / "good", tmp_path / "bad"
    for d in (good, bad):
        d.mkdir()
        _make_row(d, labels=True)
    if with_sha256:
        recs = [json.loads(line) for line in (bad / "generation.jsonl").read_text().splitlines()]
        for r in recs:
            data = (bad / r["image_path"]).read_bytes()
            r.update(image_bytes=len(data), image_sha256=hashlib.sha256(data).hexdigest())
        (bad / "generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    names = sorted(p.name for p in (bad / "images").iterdir())
    target = bad / "images" / names[2]
    data = target.read_bytes()
    if how == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "other_image":
        target.write_bytes((bad / "images" / names[3]).read_bytes())
    else:
        target.unlink()
    code = main(["metrics", "--generation-dir", str(good), "--generation-dir", str(bad), "--metrics",
                 "toy_fid,toy_class_accuracy"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ilf metrics: error: ") and str(target) in err, err
    assert "Traceback" not in err
    assert not (good / "metrics.jsonl").exists() and not (bad / "metrics.jsonl").exists()
    assert "fid" not in toy_module  # nothing was scored
