"""Config files as every `ilf` command reads them: the resolved rows the workflow sees, and one error line.

A workflow config's rows are templates (`defaults`, `variants`, `vary`); every command that takes `--config`
reads it through `load_workflow_config` (training YAMLs through `load_train_config`), so `ilf prefetch` fetches
what the workflow's jobs will load, and a malformed file fails every command with one line
`ilf <cmd>: error: <file>: <what> (line L, column C)`, exit 2, nothing written.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ilf.cli import COMMANDS, main, module_name
from ilf.harness.workflow_config import REPO_ROOT, load_workflow_config, prompt_specs
from ilf.metrics.assets import assets_for_metrics, assets_for_prompt_sets

PAPER = REPO_ROOT / "configs" / "paper.yaml"


def _prefetch_lists(capsys, argv: list[str]) -> tuple[set[str], set[str]]:
    """(backbones, metric assets) an `ilf prefetch ... --dry-run` prints."""
    assert main(["prefetch", *argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    downloads = re.findall(r"^\[prefetch\] (\S+): hf download ", out, re.M)
    assert len(downloads) == len(set(downloads)), out  # each backbone's download line once
    backbones = re.search(r"^\[prefetch\] backbones: (.*?); metric assets for:", out, re.M).group(1)
    assets = re.search(r"^\[prefetch\] metric assets: (.*)$", out, re.M).group(1)
    as_set = lambda s: set() if s == "none" else set(ast.literal_eval(s))  # noqa: E731
    return as_set(backbones), as_set(assets)


def test_prefetch_of_the_paper_config_lists_every_backbone_and_metric_asset(capsys, tmp_path):
    backbones, assets = _prefetch_lists(capsys, ["--config", str(PAPER), "--cache-dir", str(tmp_path / "cache")])
    cfg = load_workflow_config(PAPER)  # the rows the workflow runs: what its jobs load
    used = cfg["rows"] + cfg["features"]
    assert backbones == {r["backbone"] for r in used}
    metrics = sorted({m for r in cfg["rows"] for m in r["metrics"]})
    sets = sorted({s["set"] for r in cfg["rows"] for s in prompt_specs(r)} | {f["prompts"] for f in cfg["features"]})
    assert assets == set(assets_for_metrics(metrics)) | set(assets_for_prompt_sets(sets))
    # the paper run's five backbones and ten metric assets (LPIPS's AlexNet for its fidelity columns), by name
    assert backbones == {"pixart-alpha-512", "pixart-alpha-1024", "pixart-sigma-512", "pixart-sigma-1024", "dit-xl-2-256"}
    assert assets == {"imagereward-v1.0", "bert-base-uncased", "imagereward-prompts", "open_clip:ViT-L-14:openai",
                      "clipiqa-rn50", "mjhq30k-meta", "inception-fid", "fid-stats:mjhq30k_1024",
                      "fid-stats:imagenet_train_256", "lpips-alexnet"}
    assert not (tmp_path / "cache").exists()  # a dry run fetches nothing


def test_prefetch_follows_the_configs_metric_options(capsys, tmp_path):
    raw = yaml.safe_load(PAPER.read_text())
    raw["metric_options"] = {"clip_model": "ViT-B-32:openai", "fid_ref": "my_stats"}  # what `ilf metrics` is given
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(raw))
    _, assets = _prefetch_lists(capsys, ["--config", str(tmp_path / "paper.yaml")])
    assert {"open_clip:ViT-B-32:openai", "fid-stats:my_stats"} <= assets
    assert not {"open_clip:ViT-L-14:openai", "fid-stats:mjhq30k_1024", "fid-stats:imagenet_train_256"} & assets


def test_prefetch_fetches_everything_it_can_before_naming_what_the_user_makes(tmp_path, monkeypatch):
    import ilf.metrics.assets as assets

    fetched = []
    monkeypatch.setattr(assets, "_fetch_one", lambda name, root: fetched.append(name))
    names = ["fid-stats:imagenet_train_256", "fid-stats:mjhq30k_1024", "clipiqa-rn50"]  # sorted, as prefetch passes them
    with pytest.raises(ValueError, match=r"^fid-stats:imagenet_train_256 cannot be downloaded: .*--make-fid-ref"):
        assets.fetch_metric_assets(names, tmp_path)
    assert set(fetched) == {"clipiqa-rn50", "mjhq30k-images", "inception-fid", "fid-stats:mjhq30k_1024"}


def test_prefetch_of_the_toy_config_needs_nothing(capsys):
    assert _prefetch_lists(capsys, ["--config", str(REPO_ROOT / "configs" / "toy.yaml")]) == (set(), set())


# ------------------------------------------------------------------------------------- malformed files
WORKFLOW_HEAD = "name: t\nworld: toy\nout_dir: out\nseed: 0\nbackbones:\n  toy-t2i: {task: t2i, num_blocks: 4, resolution: 8}\n"
ROW = "  - name: a\n    table: table1\n    backbone: toy-t2i\n    steps: {steps}\n    method: baseline\n    prompts: toy-captions\n"
# kind -> (workflow config text, training YAML text, (line, column) named, or None)
MALFORMED = {
    "syntax": ("name: t\nrows: [\n", "backbone: toy-t2i\noptim: {lr: 1\n", (3, 1)),
    "tab": ("name: t\n\trows: []\n", "backbone: toy-t2i\n\titerations: 2\n", (2, 1)),
    "list": ("# a comment\n\n- name: t\n", "# a comment\n\n- backbone: toy-t2i\n", (3, 1)),
    "scalar": ("# a comment\nname\n", "# a comment\ntoy_t2i\n", (2, 1)),
    "field_type": (WORKFLOW_HEAD + "rows: {a: 1}\n", "backbone: toy-t2i\niterations: 2\nfeedback: [1]\n", None),
    "nested_field_type": (WORKFLOW_HEAD + "rows:\n" + ROW.format(steps="many"),
                          "backbone: toy-t2i\niterations: 2\noptim:\n  betas: 0.9\n", None),
    "empty": ("", "# nothing here\n", None),
}
WHERE = {"field_type": ((7, 1), (3, 1)), "nested_field_type": ((11, 5), (4, 3))}  # (workflow, training)
ARGS = {"prefetch": ["--cache-dir", "cache"], "generate": ["--row", "a"], "summarize": [], "rows": [], "browse": ["--out", "browse"],
        "features": ["--name", "a", "--out", "features"], "train": ["--out", "run"], "precompute": ["--out", "latents"]}
TRAINING = {"train", "precompute"}


def _commands_with_config() -> set[str]:
    """Commands whose module adds `--config` (read as text: importing every command's options costs seconds)."""
    out = set()
    for name in COMMANDS:
        src = (REPO_ROOT / "ilf" / "commands" / f"{module_name(name)}.py").read_text()
        if '"--config"' in src or "add_config_arguments(" in src:
            out.add(name)
    return out


def test_every_command_with_a_config_is_checked():
    assert _commands_with_config() == set(ARGS)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
@pytest.mark.parametrize("command", sorted(ARGS))
def test_malformed_config_is_one_error_line(command, kind, tmp_path, monkeypatch, capsys):
    workflow_text, training_text, where = MALFORMED[kind]
    training = command in TRAINING
    path = tmp_path / "bad.yaml"
    path.write_text(training_text if training else workflow_text)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # every output path is relative: anything written lands here
    assert main([command, "--config", str(path), *ARGS[command]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"ilf {command}: error: {path}: "), err
    where = WHERE[kind][training] if kind in WHERE else where
    if where is not None:
        assert err.rstrip().endswith(f"(line {where[0]}, column {where[1]})"), err
    if kind == "empty":
        assert "empty" in err
    if kind == "tab":
        assert "tab character" in err
    assert list(work.iterdir()) == []


def test_error_names_the_line_of_a_row_by_its_name(tmp_path, capsys):
    text = WORKFLOW_HEAD + "rows:\n" + ROW.format(steps=4) + ROW.format(steps=4).replace("name: a", "name: b").replace(
        "method: baseline", "method: cache\n    cache: {location: inner, num_cached: 9}")
    (tmp_path / "wf.yaml").write_text(text)
    assert main(["generate", "--config", str(tmp_path / "wf.yaml"), "--row", "b"]) == 2
    err = capsys.readouterr().err
    lines = text.splitlines()
    line = next(i for i, ln in enumerate(lines) if "num_cached: 9" in ln)
    where = f"(line {line + 1}, column {lines[line].index('num_cached') + 1})"
    assert "rows[b].cache.num_cached=9" in err and err.rstrip().endswith(where), err


def test_error_in_a_row_made_from_a_template_names_the_template(tmp_path, capsys):
    template = '  - name: "s{steps}"\n    table: fig8\n    backbone: toy-t2i\n    method: baseline\n' \
               '    prompts: toy-captions\n    vary: {steps: [4, 0]}\n'
    text = WORKFLOW_HEAD + "rows:\n" + ROW.format(steps=4) + template
    (tmp_path / "wf.yaml").write_text(text)
    assert main(["summarize", "--config", str(tmp_path / "wf.yaml")]) == 2
    err = capsys.readouterr().err
    line = text.splitlines().index('  - name: "s{steps}"') + 1
    assert "rows[s0].steps=0" in err and err.rstrip().endswith(f"(line {line}, column 5)"), err


def test_tab_through_the_console_script(tmp_path):
    """The entry point as a user runs it: one line on stderr, no traceback (prefetch: fails before torch loads)."""
    (tmp_path / "wf.yaml").write_text("name: t\n\trows: []\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ilf.cli", "prefetch", "--config", str(tmp_path / "wf.yaml"),
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.splitlines() == [f"ilf prefetch: error: {tmp_path / 'wf.yaml'}: invalid YAML: a tab character "
                                        "(YAML indents with spaces only) (line 2, column 1)"]
    assert not (tmp_path / "cache").exists()
