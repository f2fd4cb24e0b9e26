"""configs/modern.yaml, the modern benchmark: its rows (reference, budgets, methods, metrics), what the config check
refuses for the families the workflow cannot run yet, `ilf rows`, and its dry run as typed through the SLURM profile
installed the README's way. (Every training job's SLURM resources: tests/workflow/test_cluster_resources.py.)"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ilf.cli import main
from ilf.config import CacheConfig, FeedbackConfig
from ilf.errors import ILFConfigError
from ilf.flops import expected_flops, image_tokens, model_flops
from ilf.harness.reference import fidelity_references
from ilf.harness.workflow_config import REPO_ROOT, load_workflow_config, resolve
from ilf.registry import BACKBONES

CONFIG = REPO_ROOT / "configs" / "modern.yaml"
MODELS = ("flux1-dev", "sd35-large", "sana-1600m-1024", "qwen-image", "wan21-t2v-1.3b")
ALL_PEERS = {"cache", "dbcache", "fbcache", "magcache", "taylorseer"}
# the peers each model runs: FirstBlockCache and TaylorSeer not on SD3.5 (docs/peers.md)
PEERS = {"flux1-dev": ALL_PEERS, "sd35-large": {"cache", "dbcache", "magcache"}, "sana-1600m-1024": ALL_PEERS,
         "qwen-image": ALL_PEERS, "wan21-t2v-1.3b": ALL_PEERS}
# models without an ILF row (its budget from the training config's loop): Qwen-Image's training needs a GPU
# over 80 GB (configs/modern.yaml's header)
UNTRAINED = {"qwen-image": "qwen_image"}
# guidance as two transformer calls per step (true CFG, Wan's CFG): every row's analytic count is per image, x 2
CALLS = {"qwen-image": 2, "wan21-t2v-1.3b": 2}
IMAGE = ({"drawbench"}, {"image_reward", "clip_score", "psnr_ref", "ssim_ref", "lpips_ref"})
PROMPTS_METRICS = {m: IMAGE for m in MODELS} | {
    "wan21-t2v-1.3b": ({"vbench-overall-consistency"}, {"clip_score", "psnr_ref", "ssim_ref", "lpips_ref"})}


@pytest.fixture(scope="module")
def cfg():
    return load_workflow_config(CONFIG)


def _raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_every_model_has_its_reference_and_the_methods_at_ilfs_budget(cfg):
    from ilf.train import load_train_config

    refs = fidelity_references(cfg)
    for model in MODELS:
        spec = BACKBONES[model]
        calls = CALLS.get(model, 1)
        rows = [r for r in cfg["rows"] if r["backbone"] == model]
        reference = [r for r in rows if r["method"] == "baseline" and r["steps"] == spec.default_steps]
        assert len(reference) == 1, model  # the model card's default steps
        ref = reference[0]
        assert ref["block_forwards_analytic"] == calls * spec.default_steps * spec.num_blocks
        sets, metrics = PROMPTS_METRICS[model]
        for r in rows:  # fidelity (psnr/ssim/lpips_ref) and speedups against the reference row
            assert set(r["metrics"]) == metrics and {p["set"] for p in r["prompts"]} == sets, r["name"]
            assert r["table"] == "table1" and r["task"] == spec.task
            if r is not ref:
                assert refs[r["name"]] == ref["name"], r["name"]
        methods = {r["method"] for r in rows}
        assert methods == PEERS[model] | {"baseline"} | ({"ilf"} if model not in UNTRAINED else set()), model
        dbcache = {(r["dbcache"]["policy"], r["dbcache"]["taylorseer"]) for r in rows if r["method"] == "dbcache"}
        assert dbcache == {(p, t) for p in ("static", "dynamic") for t in (False, True)}, model
        ilf = [r for r in rows if r["method"] == "ilf"]
        if model in UNTRAINED:  # left out (configs/modern.yaml's header); the budget its row would have
            assert not ilf
            fb = load_train_config(REPO_ROOT / "configs" / "train" / f"{UNTRAINED[model]}.yaml").feedback
            steps, loop = spec.default_steps // 2, (fb.loop_start, fb.loop_end)
        else:
            (ilf,) = ilf
            steps, loop = ilf["steps"], (ilf["feedback"]["loop_start"], ilf["feedback"]["loop_end"])
            assert steps == spec.default_steps // 2
        budget = steps * spec.num_blocks + 4 * (loop[1] - loop[0] + 2)  # Table 1's "outer:4" schedule
        if ilf:  # per image: every transformer call of a step runs the schedule (Wan's CFG: two)
            assert ilf["block_forwards_analytic"] == calls * budget
        assert {r["steps"] for r in rows if r["method"] == "baseline"} == {spec.default_steps, round(budget / spec.num_blocks)}
        for r in rows:  # every static row within one block per step of ILF's budget (fewer steps: the nearest count)
            if r is not ref and isinstance(r["block_forwards_analytic"], int) and r is not ilf:
                per_call = r["block_forwards_analytic"] // calls
                assert abs(per_call - budget) <= spec.default_steps + spec.num_blocks, (r["name"], per_call, budget)


def test_qwen_image_rows_run_true_cfg_and_wan_rows_write_clips(cfg):
    """Qwen-Image: the row's guidance 4.0 is its `true_cfg_scale` (with the negative prompt " "), two calls per
    step; Wan2.1: 81-frame 480 x 832 clips, CFG as two calls per step, one clip per VBench prompt."""
    from ilf.harness.workflow_config import true_cfg_kwargs

    for r in cfg["rows"]:
        if r["backbone"] == "qwen-image":
            assert true_cfg_kwargs(r) == {"true_cfg_scale": 4.0, "negative_prompt": " "}, r["name"]
        else:  # FLUX.1-dev keeps its distilled guidance; the others have no true CFG
            assert true_cfg_kwargs(r) == {}, r["name"]
        if r["backbone"] == "wan21-t2v-1.3b":
            assert (r["num_frames"], r["resolution"], r["width"], r["guidance_scale"]) == (81, 480, 832, 5.0)
            assert r["prompts"] == [{"set": "vbench-overall-consistency", "num_prompts": 93, "images_per_prompt": 1}]


def test_analytic_flops_of_the_models_rows(cfg):
    """Each model's analytic FLOPs (ilf.flops on the registry's published transformer config) put ILF and the
    paper's cache below the reference, and ILF's extra loop above its plain step count."""
    for model in ("flux1-dev", "sd35-large"):
        spec = BACKBONES[model]
        tokens = image_tokens(spec.transformer_config, spec.resolution, model_class=spec.transformer_class)
        mf = model_flops(spec.transformer_config, tokens, spec.max_sequence_length, model_class=spec.transformer_class)
        rows = {r["name"].rsplit("_", 1)[1]: r for r in cfg["rows"] if r["backbone"] == model}
        ref = expected_flops(None, mf, spec.default_steps)
        fb = rows[f"ilf-{spec.default_steps // 2}"]["feedback"]
        ilf = expected_flops(FeedbackConfig(fb["loop_start"], fb["loop_end"], fb["feedback_steps"]), mf,
                             spec.default_steps // 2)
        cache = expected_flops(CacheConfig.from_dict(rows["cache"]["cache"]), mf, spec.default_steps)
        plain = expected_flops(None, mf, spec.default_steps // 2)
        assert ref == spec.default_steps * mf.per_call and plain < ilf < ref and cache < ref, model
        assert 1.5 < ref / ilf < 2.0, (model, ref / ilf)  # the ~1.8x of the block count, in FLOPs


def test_ilf_rows_lists_every_row(capsys, cfg):
    assert main(["rows", "--config", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    for r in cfg["rows"]:
        line = next(x for x in out.splitlines() if f" {r['name']} " in x)
        want = "dynamic" if r["block_forwards_analytic"] is None else str(r["block_forwards_analytic"])
        assert line.endswith(f"blocks={want}"), line  # a dynamic method's count is measured only
    assert "blocks=None" not in out and f"{len(cfg['rows'])} rows" in out and "training runs: flux1_dev, sana_1600m, sd35_large, wan21_t2v_1_3b" in out


@pytest.mark.parametrize("case,key,text", [
    ("video", "backbones.wan21-t2v-1.3b.task", "'t2v', the registry's"),
    ("blocks", "backbones.flux1-dev.num_blocks", "57, the registry's"),
])
def test_what_the_workflow_cannot_run_yet_is_refused_when_the_config_is_read(case, key, text):
    raw = _raw()
    if case == "video":  # a video backbone declared as an image one
        raw["backbones"]["wan21-t2v-1.3b"] = {"task": "t2i", "num_blocks": 30, "resolution": 480}
    elif case == "blocks":
        raw["backbones"]["flux1-dev"]["num_blocks"] = 28
    with pytest.raises(ILFConfigError) as err:
        resolve(copy.deepcopy(raw))
    assert err.value.field == key and text in str(err.value), str(err.value)


def test_ilf_rows_refuses_a_backbone_with_the_wrong_task_in_one_line(tmp_path, capsys):
    raw = _raw()
    raw["backbones"]["wan21-t2v-1.3b"] = {"task": "t2i", "num_blocks": 30, "resolution": 480}
    path = tmp_path / "modern_video.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["rows", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ilf rows: error: ") and "\n" not in err and "wan21-t2v-1.3b" in err, err


@pytest.mark.slow
def test_dry_run_through_the_slurm_profile_as_typed(tmp_path):
    """`snakemake --profile slurm --configfile configs/modern.yaml all_tables` (the profile installed as the README
    says, account and partition filled in): the DAG builds, from precompute and multi-node training to the tables."""
    readme = (REPO_ROOT / "README.md").read_text()
    install = next(ln for ln in readme.splitlines() if ln.startswith("mkdir -p ~/.config/snakemake && cp -r profiles/slurm"))
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("XDG_CONFIG_HOME", None)
    subprocess.run(["bash", "-c", install], cwd=REPO_ROOT, env=env, check=True)
    profile = tmp_path / ".config/snakemake/slurm/config.yaml"
    profile.write_text(profile.read_text().replace("YOUR_SLURM_ACCOUNT", "acct").replace("YOUR_GPU_PARTITION", "gpu"))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    # as typed: --configfile takes several files, so Snakemake reads `all_tables` as one (the file at the top of the
    # repository names the target)
    res = subprocess.run([snakemake, "--profile", "slurm", "--configfile", "configs/modern.yaml", "all_tables",
                          "-n", "--nolock", "--forceall"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "results/modern/table1.tex" in out and "results/paper/" not in out, out[-3000:]
    assert "results/modern/figures/" not in out, "all_tables builds the tables only"
    for text in ("rule precompute:", "rule train:", "rule generate_merge:", "rule metrics:", "rule tables:",
                 "srun --nodes=2", "srun --nodes=4", "torchrun --nnodes=4 --nproc_per_node=8"):
        assert text in out, text
    for r in load_workflow_config(CONFIG)["rows"]:
        assert f"results/modern/rows/{r['name']}/generation.jsonl" in out, r["name"]


def test_a_qwen_image_training_entry_is_taken_by_the_config_check():
    """Qwen-Image trains (`ilf.registry.training_refusal` is None): its training entry passes the config check, with
    the loop of configs/train/qwen_image.yaml."""
    raw = _raw()
    raw["training"]["qwen_image"] = {"config": "configs/train/qwen_image.yaml", "nodes": 1, "gpus": 8}
    cfg = resolve(copy.deepcopy(raw))
    assert (cfg["training"]["qwen_image"]["loop_start"], cfg["training"]["qwen_image"]["loop_end"]) == (17, 42)
