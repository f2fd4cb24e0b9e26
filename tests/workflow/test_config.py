"""The workflow configs: validation errors name the key; paper.yaml reproduces the paper's rows."""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ilf.errors import ILFConfigError
from ilf.harness.workflow_config import (REPO_ROOT, check_slurm_account, checkpoint_iterations,
                                         generation_signature, load_workflow_config, resolve, tables, training_overrides)

CONFIGS = REPO_ROOT / "configs"


def _raw(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", ["toy.yaml", "ci.yaml", "paper.yaml"])
def test_shipped_configs_resolve(name):
    cfg = load_workflow_config(CONFIGS / name)
    names = [r["name"] for r in cfg["rows"]]
    assert len(names) == len(set(names))
    assert tables(cfg) == [f"table{k}" for k in range(1, 7)] + (["toy_flow"] if name != "paper.yaml" else [])
    for r in cfg["rows"]:
        assert r["generation_dir"].startswith(cfg["out_dir"] + "/rows/")
        if r["method"] == "ilf":
            assert r["feedback"]["checkpoint"].startswith(f"{cfg['out_dir']}/runs/{r['feedback']['training']}/")
    # a resolved config re-resolves to itself (what `ilf generate --config <out_dir>/workflow_config.json` reads)
    assert resolve(copy.deepcopy(cfg)) == cfg


def test_paper_config_covers_every_printed_row_with_its_block_count():
    cfg = load_workflow_config(CONFIGS / "paper.yaml")
    paper = pd.read_csv(CONFIGS / "paper_numbers.csv")
    by_key = {r["paper_row"]: r for r in cfg["rows"] if r["paper_row"]}
    assert set(paper["paper_row"]) == set(by_key), "every paper row of Tables 1-6 has exactly one config row"
    for _, p in paper.iterrows():
        row = by_key[p["paper_row"]]
        assert row["steps"] == p["steps"] and row["method"] == p["method"], p["paper_row"]
        if p["paper_row"].startswith("t6/"):  # documented: c = 14 as the text says -> 420, the paper prints 440
            assert (row["block_forwards_analytic"], p["block_forwards"]) == (420, 440)
        else:
            assert row["block_forwards_analytic"] == p["block_forwards"], p["paper_row"]


def test_toy_config_halves_blocks_and_keeps_steps():
    toy = {r["paper_row"]: r for r in load_workflow_config(CONFIGS / "toy.yaml")["rows"] if r["paper_row"]}
    paper = {r["paper_row"]: r for r in load_workflow_config(CONFIGS / "paper.yaml")["rows"] if r["paper_row"]}
    assert set(toy) <= set(paper) and {k.split("/")[0] for k in toy} == {f"t{k}" for k in range(1, 7)}
    for key, t in toy.items():
        p = paper[key]
        assert t["steps"] == p["steps"] and t["method"] == p["method"] and t["num_blocks"] * 2 == p["num_blocks"]
        if t["method"] == "cache":
            assert t["cache"]["num_cached"] * 2 == p["cache"]["num_cached"]
            assert t["cache"]["interval"] == p["cache"]["interval"]
        if t["method"] == "ilf" and key.startswith("t1"):
            assert (t["feedback"]["loop_start"], t["feedback"]["loop_end"]) == (4, 9)
    # Table 1 budgets 560/336/326/332 scale to 280/168/163/168
    assert [toy[f"t1/pixart-alpha-512/{k}"]["block_forwards_analytic"]
            for k in ("baseline-20", "baseline-12", "cache", "ilf")] == [280, 168, 163, 168]


def test_identical_rows_share_images_and_schedules_compare_resolved():
    cfg = load_workflow_config(CONFIGS / "paper.yaml")
    rows = {r["name"]: r for r in cfg["rows"]}
    assert rows["t4_pixart-alpha-512_baseline-20"]["shares_images_with"] == "t1_pixart-alpha-512_baseline-20"
    # Table 4's outer:4 and Table 3's skip-inner:8 are the same steps at 12 steps: one folder
    assert rows["t4_pixart-alpha-512_ilf"]["generation_dir"] == rows["t3_pixart-alpha-512_loop-8-19"]["generation_dir"]
    assert rows["t1_pixart-alpha-512_cache"]["shares_images_with"] is None
    assert generation_signature(rows["t1_pixart-alpha-512_ilf"]) != generation_signature(rows["t4_pixart-alpha-512_ilf"])


def test_training_overrides_keep_the_checkpoints_rows_need():
    cfg = load_workflow_config(CONFIGS / "toy.yaml")
    assert checkpoint_iterations(cfg, "toy_t2i") == [40, 80]  # the Fig. 7 checkpoints the rows ask for
    over = training_overrides(cfg, "toy_t2i_loop0-2")
    assert over["feedback.loop_start"] == 0 and over["feedback.loop_end"] == 2 and over["name"] == "toy_t2i_loop0-2"
    assert cfg["training"]["toy_t2i_loop0-2"]["loop_end"] == 2  # read from the YAML + overrides


def _bad(mutate) -> str:
    cfg = _raw("ci.yaml")
    mutate(cfg)
    with pytest.raises(ILFConfigError) as info:
        resolve(cfg)
    return str(info.value)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["rows"][0].update(method="magic"), "rows[0].method"),
    (lambda c: c["rows"][3]["feedback"].update(training="nope"), "feedback.training"),
    (lambda c: c["rows"][0].update(steps=0), "rows[0].steps"),
    (lambda c: c["rows"][0].update(stpes=20), "rows[0].stpes"),
    (lambda c: c["rows"][1].update(name=c["rows"][0]["name"]), "name"),
    (lambda c: c["rows"][0].update(backbone="toy-t3i"), "backbone"),
    (lambda c: c["rows"][2]["cache"].update(num_cached=15), "cache.num_cached"),
    (lambda c: c["rows"][0].update(reference_row="nope"), "reference_row"),
    (lambda c: c["rows"][0].update(metrics=["image_reward"]), "metrics"),
    (lambda c: c["training"]["toy_t2i"].update(config="configs/train/missing.yaml"), "training.toy_t2i.config"),
    (lambda c: c["training"]["toy_t2i"].update(latents="nope"), "training.toy_t2i.latents"),
    (lambda c: c["rows"][-1]["vary"].update({"feedback.iteration": [0]}), "iteration"),
    (lambda c: c["rows"][-1]["variants"][0]["feedback"].update(feedback_steps="outer:99"), "feedback_steps"),
    # wrong types that reach the rows only through a template or a training run's overrides
    (lambda c: c["rows"][-1]["variants"][0].update(backbone=[]), "rows[fig7_toy-t2i_"),
    (lambda c: c["rows"][-1]["variants"][0].update(prompts=5), ".prompts=5"),
    (lambda c: c["defaults"].update(metrics="toy_fid"), ".metrics='toy_fid' is not allowed: expected a list"),
    (lambda c: c["training"]["toy_t2i"].setdefault("overrides", {}).update({"feedback.loop_start": []}),
     "training.toy_t2i.loop_start"),
])
def test_bad_config_names_the_key(mutate, key):
    assert key in _bad(mutate)


def test_steps_below_one_from_a_sweep_is_caught():
    def mutate(c):
        c["rows"].append({"name": "s{steps}", "table": "fig8", "method": "baseline", "vary": {"steps": [4, 0]}})
    assert "rows[s0].steps" in _bad(mutate)


def test_slurm_account_placeholder_is_refused():
    for bad in (None, "", "YOUR_SLURM_ACCOUNT", '"YOUR_SLURM_ACCOUNT"'):
        with pytest.raises(ILFConfigError, match="slurm_account"):
            check_slurm_account(bad)
    check_slurm_account("my_lab")


def test_profiles_point_at_the_right_configs():
    slurm = yaml.safe_load((REPO_ROOT / "profiles/slurm/config.yaml").read_text())
    assert slurm["executor"] == "slurm" and slurm["configfile"] == "configs/paper.yaml"
    assert set(slurm["default-resources"]) >= {"slurm_account", "slurm_partition"}
    assert not any("slurm" in k for k in yaml.safe_load((REPO_ROOT / "profiles/default/config.yaml").read_text()))
    rules = "".join(p.read_text() for p in (REPO_ROOT / "workflow/rules").glob("*.smk") if p.name != "common.smk")
    assert "slurm_account" not in rules and "slurm_partition" not in rules  # site settings only in the profile
    assert "gpu=" in rules and "runtime=" in rules and "mem_mb=" in rules  # per-rule resources in the rules


def test_toy_study_config_resolves_with_paired_rows():
    from ilf.harness.workflow_config import prompt_specs

    cfg = load_workflow_config(CONFIGS / "toy_study.yaml")
    assert {"toy_c2i_fast", "toy_c2i_standard", "toy_c2i_none"} <= set(cfg["training"])  # Fig. 11 analogue
    rows = {r["name"]: r for r in cfg["rows"]}
    specs = [prompt_specs(r) for r in rows.values()]
    # every row: the same classes, seeds 0..k-1 per class (k = 100, 300 or 500: a row's images are a prefix of the
    # largest set, so rows pair on their common images)
    assert len(rows) > 10 and all(len(s) == 1 and s[0]["set"] == "toy-digits" and s[0]["num_prompts"] is None
                                  for s in specs)
    # equal block budget of the halved-steps Table 1 counterparts: ILF 84 = 6-step 84 ~ cache 86 vs 10-step 140
    assert rows["c2i_ilf5"]["block_forwards_analytic"] == rows["c2i_b6"]["block_forwards_analytic"] == 84
    assert rows["c2i_cache10"]["block_forwards_analytic"] == 86 and rows["c2i_b10"]["block_forwards_analytic"] == 140


def test_row_feedback_defaults_follow_the_method_default_ratio():
    """A row that names no ratio gets FeedbackConfig's default (eq. 4 read as m/n), not a second copy of it."""
    from ilf import FeedbackConfig

    c = copy.deepcopy(yaml.safe_load((CONFIGS / "ci.yaml").read_text()))
    rows = [r for r in resolve(c)["rows"] if r.get("feedback")]
    assert rows and {r["feedback"]["ratio"] for r in rows} == {FeedbackConfig().ratio} == {"m/n"}


@pytest.mark.parametrize("name", ["toy.yaml", "paper.yaml"])
def test_table_rows_compare_with_their_20_step_baseline(name):
    """The paper's speedups (and the fidelity metrics) are against the 20-step baseline of the same model: a longer
    sweep baseline of the same backbone (paper Fig. 8 goes to 25 steps) must not become the default reference."""
    from ilf.harness.reference import pick_reference

    cfg = load_workflow_config(CONFIGS / name)
    checked = 0
    for r in cfg["rows"]:
        if {t for t in ([r["table"]] if isinstance(r["table"], str) else r["table"])} & {"table1", "table3", "table4",
                                                                                          "table5", "table6", "fig8"}:
            ref = pick_reference(r, cfg["rows"])
            assert ref["method"] == "baseline" and ref["steps"] == 20 and ref["backbone"] == r["backbone"], r["name"]
            checked += 1
    assert checked > 20


def test_reference_metrics_in_both_worlds_need_one_reference_per_image_folder():
    cfg = _raw("ci.yaml")
    assert "psnr_ref" in cfg["defaults"]["metrics"]  # the toy world takes them (and the paper world: paper.yaml)

    def lone(c):  # a group without a baseline, no reference_row
        c["rows"].append({"name": "lone", "table": "extra", "group": "alone", "steps": 10, "method": "cache",
                          "cache": {"location": "inner", "num_cached": 9, "interval": 3}, "metrics": ["psnr_ref"]})
    assert "rows[lone].reference_row" in _bad(lone) and "psnr_ref needs one" in _bad(lone)

    def split(c):  # same images as t1_toy-t2i_cache (one folder, one stored psnr_ref) but another reference
        c["rows"].append({**copy.deepcopy(c["rows"][2]), "name": "twin", "reference_row": "t1_toy-t2i_baseline-12"})
    msg = _bad(split)
    assert "rows[twin].reference_row" in msg and "t1_toy-t2i_cache" in msg


def test_drawbench_is_a_text_prompt_set():
    cfg = _raw("paper.yaml")
    cfg["rows"] = [{"name": "db", "table": "extra", "backbone": "pixart-alpha-512", "steps": 20, "method": "baseline",
                    "prompts": "drawbench", "metrics": ["image_reward", "clip_score", "psnr_ref"]}]
    assert [r["prompts"] for r in resolve(cfg)["rows"]] == ["drawbench"]
    cfg["rows"][0].update(backbone="dit-xl-2-256")
    with pytest.raises(ILFConfigError, match="a c2i prompt set"):
        resolve(cfg)


def _with_former_cache_key(node):
    """`node` with every `cache: {num_cached: c}` written as `cache: {num_blocks: c}` (the former key)."""
    if isinstance(node, list):
        return [_with_former_cache_key(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_former_cache_key(v) for k, v in node.items()}
    if isinstance(out.get("cache"), dict) and "num_cached" in out["cache"]:
        out["cache"] = {("num_blocks" if k == "num_cached" else k): v for k, v in out["cache"].items()}
    return out


@pytest.mark.parametrize("name", ["toy.yaml", "ci.yaml", "paper.yaml", "toy_study_peers.yaml"])
def test_cache_former_key_num_blocks_resolves_as_num_cached_with_a_deprecation_warning(name):
    raw = _raw(name)
    old = _with_former_cache_key(raw)
    assert old != raw  # every shipped config has cache rows
    with pytest.warns(DeprecationWarning, match="num_cached"):
        assert resolve(old)["rows"] == resolve(raw)["rows"]  # `features` entries are kept as written
    both = copy.deepcopy(raw)
    row = next(r for r in both["rows"] if isinstance(r.get("cache"), dict) and "num_cached" in r["cache"])
    row["cache"]["num_blocks"] = row["cache"]["num_cached"]
    with pytest.raises(ILFConfigError, match=r"cache\.num_blocks.*only `num_cached`"):
        resolve(both)


def test_cache_rows_keep_the_generation_signature_of_their_stored_records():
    """Records made before `num_cached` was named so still match their row (resume keeps their images)."""
    import json

    rows = {r["name"]: r for r in load_workflow_config(CONFIGS / "toy_study_peers.yaml")["rows"]}
    stored = REPO_ROOT / "results/toy_study/peers/rows/p_cache10/generation.jsonl"
    record = json.loads(stored.read_text().splitlines()[0])
    assert rows["p_cache10"]["cache"]["num_cached"] == record["cache_num_blocks"] == 9
    assert generation_signature(rows["p_cache10"]) == record["generation_signature"]


def test_stored_resolved_config_with_the_former_cache_key_loads(tmp_path):
    text = (REPO_ROOT / "results/toy_study/workflow_config.json").read_text()
    stored = tmp_path / "workflow_config.json"  # as written before `num_cached`
    stored.write_text(text.replace('"num_cached": 9}', '"num_blocks": 9}'))
    assert '"num_blocks": 9}' in stored.read_text()
    with pytest.warns(DeprecationWarning, match="num_cached"):
        rows = {r["name"]: r for r in load_workflow_config(stored)["rows"]}
    assert rows["c2i_cache10"]["cache"] == {"location": "inner", "interval": 3, "num_cached": 9}
    assert rows["c2i_cache10"]["block_forwards_analytic"] == 86


def test_unknown_key_is_named_even_beside_underscore_anchor_keys(tmp_path):
    """configs/toy.yaml has `_main:` (a YAML anchor key, allowed by `^_`); a misspelt key is what the error names."""
    from ilf.harness.workflow_config import REPO_ROOT, load_workflow_config

    text = (REPO_ROOT / "configs" / "toy.yaml").read_text()
    assert "\n_" in text  # the config has an anchor key
    path = tmp_path / "toy.yaml"
    path.write_text(text + "\nbogus_key_xyz: 1\n")
    with pytest.raises(ValueError, match=r"bogus_key_xyz=1 is not allowed"):
        load_workflow_config(path)


@pytest.mark.parametrize("name", ["toy.yaml", "ci.yaml"])
def test_flow_toy_table_rows(name):
    """The toy configs' flow-matching table: toy-flux rows, compared with its own 20-step baseline, true CFG (two
    transformer calls per step) in the analytic count, ILF trained on toy-flux latents, at the 12-step budget."""
    from ilf.harness.reference import pick_reference

    cfg = load_workflow_config(CONFIGS / name)
    rows = [r for r in cfg["rows"] if "toy_flow" in ([r["table"]] if isinstance(r["table"], str) else r["table"])]
    assert {r["backbone"] for r in rows} == {"toy-flux"} and {"baseline", "ilf", "dbcache"} <= {r["method"] for r in rows}
    ref = next(r for r in rows if r["method"] == "baseline" and r["steps"] == 20)
    assert ref["block_forwards_analytic"] == 2 * 20 * 6  # cond + uncond call per step, 6 blocks
    budget = 2 * 12 * 6
    for r in rows:
        assert pick_reference(r, cfg["rows"])["name"] == ref["name"], r["name"]
        if r is not ref and isinstance(r["block_forwards_analytic"], int):
            assert abs(r["block_forwards_analytic"] - budget) <= 0.06 * budget, (r["name"], r["block_forwards_analytic"])
    ilf = next(r for r in rows if r["method"] == "ilf")
    run = cfg["training"][ilf["feedback"]["training"]]
    assert run["config"] == "configs/train/toy_flux.yaml" and (ilf["feedback"]["loop_start"], ilf["feedback"]["loop_end"]) == (2, 3)
