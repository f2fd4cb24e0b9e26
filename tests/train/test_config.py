"""Training configs: the shipped YAMLs, validation messages, overrides and the CLI help."""
from __future__ import annotations

from pathlib import Path

import pytest

from ilf import ILFConfigError
from ilf.cli import build_parser
from ilf.train import load_train_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
PAPER = ["pixart_alpha_512", "pixart_alpha_1024", "pixart_sigma_512", "pixart_sigma_1024", "dit_xl_2_256"]


@pytest.mark.parametrize("name", PAPER + ["toy_t2i", "toy_c2i"])
def test_shipped_configs_load(name):
    cfg = load_train_config(ROOT / "configs" / "train" / f"{name}.yaml")
    assert cfg.name == name and cfg.distill == "fast" and cfg.teacher_steps == 8 and cfg.cond_dropout == 0.1
    if name.startswith("toy"):
        assert cfg.backbone == name.replace("_", "-") and (cfg.feedback.loop_start, cfg.feedback.loop_end) == (4, 9)
    else:
        assert (cfg.feedback.loop_start, cfg.feedback.loop_end) == (8, 19)
        t2i = name.startswith("pixart")
        # paper Sec. 4.1: t2i lr 1e-6, batch 2048, 5 epochs; c2i lr 5e-6, batch 8192, 10 epochs
        assert (cfg.optim.lr, cfg.global_batch_size, cfg.epochs) == ((1e-6, 2048, 5) if t2i else (5e-6, 8192, 10))
        assert cfg.accumulation_steps(8) >= 1
        if t2i:  # 2M pairs x 5 epochs / 2048 ~ 4,883 iterations ("saturates near 5,000")
            assert cfg.total_iterations(2_000_000) == 4883


def test_overrides_and_validation(tmp_path):
    path = ROOT / "configs" / "train" / "toy_t2i.yaml"
    cfg = load_train_config(path, parse_overrides(["optim.lr=1e-5", "distill=standard", "iterations=7"]))
    assert (cfg.optim.lr, cfg.distill, cfg.iterations) == (1e-5, "standard", 7)
    with pytest.raises(ILFConfigError, match="distill='slow'"):
        load_train_config(path, {"distill": "slow"})
    with pytest.raises(ILFConfigError, match="optim.lrr"):
        load_train_config(path, {"optim.lrr": 1})
    with pytest.raises(ILFConfigError, match="feedback.loop_end"):
        load_train_config(path, {"feedback.loop_end": 2})
    with pytest.raises(ILFConfigError, match="exactly one of iterations / epochs"):
        load_train_config(path, {"epochs": 2})
    with pytest.raises(ILFConfigError, match="multiple of micro_batch_size"):
        load_train_config(path, {"micro_batch_size": 5}).accumulation_steps(1)
    with pytest.raises(FileNotFoundError):
        load_train_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, field, where", [
    ("optim: {betas: 0.9}", "optim.betas=0.9", "expected a list of 2 numbers (line 3, column 9)"),
    ("optim:\n  max_grad_norm: big", "optim.max_grad_norm='big'", "expected a number or null (line 4, column 3)"),
    ("data: []", "data=[]", "expected a mapping of fields (line 3, column 1)"),
    ("data: {source: toy-shapes, num_samples: 8, path: 5}", "data.path=5", "(line 3, column 44)"),
    ("seed: one", "seed='one'", "expected an integer (line 3, column 1)"),
    ("keep_iterations: 500", "keep_iterations=500", "expected a list of integers (line 3, column 1)"),
])
def test_wrong_field_types_are_named_with_their_line(tmp_path, text, field, where):
    path = tmp_path / "t.yaml"
    path.write_text("backbone: toy-t2i\niterations: 2\n" + text + "\n")
    with pytest.raises(ILFConfigError) as info:
        load_train_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field} is not allowed") and msg.endswith(where), msg


def test_cli_help_lists_modes_and_resume():
    sub = next(a for a in build_parser("train")._actions if a.dest == "command").choices
    text = sub["train"].format_help()
    for word in ("fast", "standard", "none", "--resume", "--resume-from", "torchrun"):
        assert word in text
    sub = next(a for a in build_parser("precompute")._actions if a.dest == "command").choices
    assert "--out" in sub["precompute"].format_help()


@pytest.mark.parametrize("key", ["seed", "data.seed"])
def test_negative_or_huge_seeds_are_refused_when_the_config_is_read(key):
    path = ROOT / "configs" / "train" / "toy_t2i.yaml"
    for bad in (-1, 2**32):
        with pytest.raises(ILFConfigError, match=rf"{key}={bad} is not allowed"):
            load_train_config(path, {key: bad})


def test_train_without_latents_names_its_own_config_and_leaves_nothing(tmp_path, capsys):
    from ilf.cli import main

    out, latents = tmp_path / "run", tmp_path / "no-latents"
    config = str(ROOT / "configs" / "train" / "toy_t2i.yaml")
    assert main(["train", "--config", config, "--out", str(out), "--latents", str(latents), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"ilf precompute --config {config} --out {latents}" in err, err
    assert "ILF_CACHE" not in err and not out.exists()
    latents.mkdir()  # a folder without meta.json: the same command, and still nothing written
    assert main(["train", "--config", config, "--out", str(out), "--latents", str(latents), "--no-progress"]) == 2
    assert "meta.json of the precomputed latents not found" in capsys.readouterr().err and not out.exists()
