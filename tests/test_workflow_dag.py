"""The Snakemake DAG: lint, and bad input failing before any job starts. (The dry runs of the toy default and
of the paper config on the SLURM profile are the README's commands: tests/test_workflow_readme.py.)"""
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
