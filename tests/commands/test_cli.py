"""The `ilf` command line: one command per module of `ilf.commands`, each listed once with its one-line help,
each `--help` working, and no other `python -m` entry point inside the package."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ilf.cli import COMMANDS, main, module_name

ROOT = Path(__file__).resolve().parents[2]
COMMAND_MODULES = sorted(p.stem for p in (ROOT / "ilf" / "commands").glob("*.py") if not p.stem.startswith("_"))


def test_every_command_module_is_a_listed_command():
    assert sorted(module_name(name) for name in COMMANDS) == COMMAND_MODULES


def test_command_modules_do_not_restate_the_one_line_help():
    """The one-line help of a command lives in `ilf.cli.COMMANDS` only (read as text: no module is imported)."""
    for stem in COMMAND_MODULES:
        tree = ast.parse((ROOT / "ilf" / "commands" / f"{stem}.py").read_text())
        names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)}
        assert not names & {"HELP", "NAME"}, f"ilf/commands/{stem}.py restates {sorted(names & {'HELP', 'NAME'})}"


def test_top_level_help_lists_every_command_with_one_line_and_imports_no_torch():
    code = ("import sys\nfrom ilf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}  # wide enough that argparse wraps no line
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         check=True).stdout
    assert out.rstrip().endswith("HEAVY []"), out
    listed: dict[str, str] = {}
    for line in out.split("options:")[0].splitlines():
        if line.startswith("    ") and not line.startswith("     "):  # a command (its help may be on the next line)
            name, _, help_text = line.strip().partition(" ")
            listed[name] = help_text.strip()
        elif line.startswith("     ") and listed:
            listed[name] = f"{listed[name]} {line.strip()}".strip()
    assert listed == COMMANDS


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_runs(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ilf {name}")


def test_no_module_of_the_package_but_the_cli_runs_as_a_script():
    """`python -m ilf.<module>` entry points are `ilf` commands instead (`python -m ilf.cli` stays for torchrun)."""
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ilf").rglob("*.py")
                     if "__name__ == \"__main__\"" in p.read_text() and p != ROOT / "ilf" / "cli.py")
    assert scripts == []


def test_rows_lists_every_row_of_a_config_and_names_only_with_names(capsys):
    from ilf.harness.workflow_config import REPO_ROOT, generation_rows, load_workflow_config

    config = REPO_ROOT / "configs" / "toy.yaml"
    cfg = load_workflow_config(config)
    assert main(["rows", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(cfg["rows"]) + 1
    assert [ln.split()[1] for ln in lines[:-1]] == [r["name"] for r in cfg["rows"]]
    assert lines[-1].startswith(f"{len(cfg['rows'])} rows, {len(generation_rows(cfg))} image folders, training runs: ")
    assert main(["rows", "--config", str(config), "--names"]) == 0
    assert capsys.readouterr().out.splitlines() == [r["name"] for r in cfg["rows"]]


def test_bench_summary_writes_the_summary_and_names_the_fastest_sdpa(tmp_path, capsys):
    import csv
    import json

    recs = [{"backbone": "pixart-alpha-1024", "row": "baseline-20", "error": "", "compile": "none",
             "sdpa_backend": sdpa, "seconds_median": s, "rel_diff_vs_eager": "0", "efficiency": "1.0"}
            for sdpa, s in (("default", "0.9"), ("cudnn", "0.7"), ("flash", "0.8"))]
    with open(tmp_path / "eager.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    assert main(["bench-summary", "--fastest-sdpa", str(tmp_path / "eager.csv")]) == 0
    assert capsys.readouterr().out == "cudnn\n"
    assert main(["bench-summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fastest"]["pixart-alpha-1024"]["baseline-20"]["sdpa_backend"] == "cudnn"
    assert "fastest exact pixart-alpha-1024" in out and out.rstrip().endswith(f"wrote {tmp_path / 'summary.json'}")
    assert main(["bench-summary", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("ilf bench-summary: error: ")


def test_toy_study_subset_remakes_the_stored_images(tmp_path, one_thread, capsys):
    """The first digit of every class of the 5-step baseline, re-made from the study's stored seeds, is the stored
    image: batch composition (10 here, 100 in the stored file) changes only float32 rounding, which moves a pixel
    across at most one uint8 rounding step."""
    import numpy as np

    out = tmp_path / "subset.npz"
    assert main(["toy", "study-subset", "--out", str(out), "--rows", "c2i_b5", "--per-class", "1",
                 "--study-dir", str(ROOT / "results" / "toy_study")]) == 0
    new, stored = np.load(out), np.load(ROOT / "results" / "toy_study" / "kid_check_images.npz")
    assert list(new["c2i_b5__class"]) == list(range(10)) and new["c2i_b5"].shape == (10, 32, 32, 3)
    at = [list(stored["c2i_b5__index"]).index(i) for i in new["c2i_b5__index"]]
    assert (new["c2i_b5__seed"] == stored["c2i_b5__seed"][at]).all()
    diff = np.abs(new["c2i_b5"].astype(int) - stored["c2i_b5"][at].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert main(["toy", "study-subset", "--out", str(out), "--rows", "c2i_ilf5",
                 "--study-dir", str(ROOT / "results" / "toy_study")]) == 2
    assert "only baseline rows" in capsys.readouterr().err


BAD_INPUT = {  # argv -> what the one error line says; nothing is written
    "generate-shards": (["generate", "--config", "configs/toy.yaml", "--row", "t1_toy-t2i_ilf", "--num-shards", "0"],
                        "0 is not a positive integer"),
    "generate-batch": (["generate", "--config", "configs/toy.yaml", "--row", "t1_toy-t2i_ilf", "--batch-size", "0"],
                       "0 is not a positive integer"),
    "paired-n-boot": (["paired", "--summary", "summary.csv", "--reference", "x", "--n-boot", "-5"],
                      "-5 is not a positive integer"),
    "paired-not-a-summary": (["paired", "--summary", "{yaml}", "--reference", "x"], "is not a row summary"),
    "tables-not-a-summary": (["tables", "--summary", "{yaml}", "--out", "tables"], "is not a row summary"),
    "bench-summary-no-csv": (["bench-summary", "{empty}"], "is not a folder of `ilf bench` CSVs"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_an_error_line_with_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    """Arguments outside their range and files of the wrong kind: exit 2, the last stderr line names the problem
    (argparse prints its usage line before it), nothing is written."""
    from ilf.cli import main

    (tmp_path / "config.yaml").write_text("name: t\nrows: [a, b\n  c: 1\n")
    (tmp_path / "empty").mkdir()
    argv, says = BAD_INPUT[case]
    argv = [a.format(yaml=tmp_path / "config.yaml", empty=tmp_path / "empty") for a in argv]
    argv = [str(ROOT / a) if a.startswith("configs/") else a for a in argv]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and says in err[-1] and err[-1].startswith(f"ilf {argv[0]}: error: "), err
    assert not any(work.iterdir()) and not any((tmp_path / "empty").iterdir())


def test_a_closed_pipe_ends_the_command_quietly():
    """`ilf rows ... | head -1`: no BrokenPipeError traceback."""
    proc = subprocess.run(f"{sys.executable} -m ilf.cli rows --config configs/ci.yaml | head -1", shell=True,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
