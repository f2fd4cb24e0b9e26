"""Every `snakemake` command the README shows runs as typed (as a forced dry run: a full run is too long; a
`--report` command as a dry run of the DAG its report is made from), so the README cannot drift from the workflow. The SLURM profile is installed the README's way into a
temporary HOME (its `mkdir -p ~/.config/snakemake && cp -r ...` line, then the account and partition filled in).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ilf.harness.workflow_config import REPO_ROOT

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
README = (REPO_ROOT / "README.md").read_text()


def readme_commands(text: str, program: str) -> list[str]:
    """Commands starting with `program` (or .venv/bin/`program`), from code blocks (one per line, split at
    `&&`, comments dropped) and from inline `code` spans, in order, without duplicates."""
    found, inline, in_block = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block:
            found += [seg.strip() for seg in line.split("#", 1)[0].split("&&")]
        else:
            inline.append(line)
    found += re.findall(r"`([^`\n]+)`", "\n".join(inline))
    pattern = re.compile(rf"^(\.venv/bin/)?{program} \S")
    return list(dict.fromkeys(c.strip() for c in found if pattern.match(c.strip())))


SNAKEMAKE = readme_commands(README, "snakemake")
# a dry run of a command is the same check as the command itself: run each once
RUNS = list(dict.fromkeys(" ".join(a for a in shlex.split(c) if a != "-n") for c in SNAKEMAKE))


def test_readme_shows_the_mission_commands():
    for cmd in (".venv/bin/snakemake results/table1.tex", "snakemake --profile slurm all_tables",
                "snakemake --profile slurm results/table1.tex", "snakemake --profile slurm --unlock"):
        assert cmd in SNAKEMAKE, (cmd, SNAKEMAKE)
    assert "scancel --me --name ilf_<run ID>" in README and "slurm-status-command: squeue" in README


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A HOME with the SLURM profile installed exactly as the README says (then account/partition filled in)."""
    home = tmp_path_factory.mktemp("home")
    install = next(ln for ln in README.splitlines() if ln.startswith("mkdir -p ~/.config/snakemake && cp -r profiles/slurm"))
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    subprocess.run(["bash", "-c", install], cwd=REPO_ROOT, env=env, check=True)
    profile = home / ".config/snakemake/slurm/config.yaml"
    text = profile.read_text().replace("YOUR_SLURM_ACCOUNT", "acct").replace("YOUR_GPU_PARTITION", "gpu")
    profile.write_text(text)
    return env


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    argv[0] = str(VENV_BIN / "snakemake")  # `snakemake` and `.venv/bin/snakemake`: this environment's
    if "--report" in argv:  # a report needs a finished run (tests/workflow/test_report.py makes one): here the DAG
        i = argv.index("--report")  # it is made from, as a dry run
        argv = argv[:i] + argv[i + 2:]
    return argv if "--unlock" in argv else argv + ["-n", "--nolock", "--forceall"]


@pytest.fixture(scope="module")
def results(home):
    """Every README command's (returncode, output), two at a time (each is one mostly single-threaded Snakemake
    process; the test machine has 2 cores). `--unlock` runs last, alone, and only if no run holds the lock."""
    dry = [c for c in RUNS if "--unlock" not in c]

    def run(command):
        res = subprocess.run(_argv(command), cwd=REPO_ROOT, env=home, capture_output=True, text=True, timeout=600)
        return res.returncode, res.stdout + res.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        out = dict(zip(dry, pool.map(run, dry)))
    for command in RUNS:
        if "--unlock" in command and not any((REPO_ROOT / ".snakemake/locks").glob("*")):
            out[command] = run(command)
    return out


@pytest.mark.parametrize("command", RUNS)
def test_readme_snakemake_command_runs_as_typed(command, results):
    argv = _argv(command)
    if command not in results:
        pytest.skip("a workflow run holds the lock in this checkout: not unlocking it")
    code, out = results[command]
    assert code == 0, f"{command}\n{out[-3000:]}"
    world = "paper" if "--profile slurm" in command else "toy"
    if "--configfile" in argv:  # another config's world: its name is the config file's
        world = Path(argv[argv.index("--configfile") + 1]).stem
    if "--unlock" in argv:
        assert "Unlocked working directory" in out, out[-3000:]
        return
    if "--lint" not in argv:
        assert f"configs/{world}.yaml" in out, out[-3000:]
    if "results/table1.tex" in argv:  # Table 1 of the active config, copied to results/table1.tex
        assert f"results/{world}/table1.tex" in out and "active_table" in out, out[-3000:]
    if "all_tables" in argv:
        last = "table6" if world in ("paper", "toy") else "table1"  # the modern benchmark has one table
        assert f"results/{world}/{last}.tex" in out and f"results/{last}.tex" in out, out[-3000:]
    if "--report" in command:  # the report's DAG: tables, figures and the browser's galleries
        assert "rule browse:" in out and "rule figures:" in out and "rule tables:" in out, out[-3000:]
    if "all_figures" in argv:  # the default job: every stage of the DAG
        # (generation and metrics run several rows per job on the toy world: rows_per_job)
        for rule in ("precompute:", "train:", "generate_rows_", "metrics_rows_", "summarize:", "tables:", "figures:",
                     "browse:"):
            assert f"rule {rule}" in out or f"localrule {rule}" in out, rule
    if argv[1:4] == ["--profile", "slurm", "all_tables"]:  # the paper DAG as the SLURM profile submits it
        assert "srun --nodes=2" in out and "torchrun --nnodes=2 --nproc_per_node=8" in out  # 1024 px training
