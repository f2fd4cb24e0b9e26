"""The Snakemake DAG: lint, and bad input failing before any job starts. (The dry runs of the toy default and
of the paper config on the SLURM profile are the README's commands: tests/workflow/test_readme.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ilf.harness.workflow_config import REPO_ROOT

pytestmark = pytest.mark.slow
SNAKEMAKE = [str(Path(sys.executable).with_name("snakemake"))]


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_lint_is_clean():
    res = snakemake("--lint")
    assert res.returncode == 0 and "Congratulations" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO_ROOT / "configs/ci.yaml").read_text())
    cfg["rows"][0]["steps"] = 0
    cfg["out_dir"] = str(tmp_path / "out")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake("all", "-n", "--nolock", "--configfile", str(path))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "steps" in out and "minimum" in out, out[-3000:]
    assert not (tmp_path / "out").exists()


def test_slurm_profile_without_account_fails_before_submitting(tmp_path):
    resolved = REPO_ROOT / "results" / "paper" / "workflow_config.json"  # dry runs of other tests may have made it
    before = resolved.stat().st_mtime_ns if resolved.exists() else None
    res = snakemake("--profile", "profiles/slurm", "all_tables")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "slurm_account" in out and "YOUR_SLURM_ACCOUNT" in out, out[-3000:]
    assert "sbatch" not in out and "Submitted" not in out
    assert (resolved.stat().st_mtime_ns if resolved.exists() else None) == before  # nothing written


def test_a_rows_metrics_job_waits_for_its_reference_rows_images(tmp_path):
    """psnr_ref / ssim_ref read the reference row's images: its generation is an input of the metrics job of a row
    scored alone (sharded t1 ILF row) and of a group of rows (the ILF rows of Table 3 and Fig. 7), in other jobs."""
    cfg = yaml.safe_load((REPO_ROOT / "configs/ci.yaml").read_text())
    out = tmp_path / "out"
    cfg["out_dir"] = str(out)
    (tmp_path / "ci.yaml").write_text(yaml.safe_dump(cfg))
    targets = [str(out / "rows" / r / "metrics_summary.json") for r in ("t1_toy-t2i_ilf", "fig7_toy-t2i_rescale_it20")]
    res = snakemake(*targets, "-n", "--nolock", "--forceall", "--configfile", str(tmp_path / "ci.yaml"))
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    reference = str(out / "rows" / "t1_toy-t2i_baseline-20" / "generation.jsonl")
    blocks = {b.split(":", 1)[0].strip(): b for b in text.split("\nrule ")[1:]}
    for rule in ("metrics", "metrics_rows_toy_t2i_ilf_1"):
        inputs = blocks[rule].split("input:", 1)[1].split("\n", 1)[0]
        assert reference in inputs, (rule, inputs)
    assert "--reference-dir " + str(out / "rows" / "t1_toy-t2i_baseline-20") in text
    assert "generate_rows_toy_t2i_other_1" in text  # the job that makes the reference's images runs first
