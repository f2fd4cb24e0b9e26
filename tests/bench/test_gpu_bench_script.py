"""benchmarks/gpu_bench.sh: valid bash; it prints its plan and skips every part past its time budget, logging each."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "benchmarks/gpu_bench.sh"
PARTS = ["pixart-eager", "flux-eager", "sd35-eager", "qwen-eager", "wan-eager", "pixart-regional", "flux-regional",
         "dit-eager-ro", "dit-whole-ro", "pixart-regional-mat", "pixart-whole", "dit-whole-ro-ilf"]


def test_gpu_bench_script_is_valid_bash():
    subprocess.run(["bash", "-n", SCRIPT], cwd=ROOT, check=True)


def test_parts_past_the_budget_are_skipped_and_logged(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "SMOKE": "1", "BUDGET": "0", "PY": sys.executable}
    proc = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "parts.log").read_text().splitlines()
    planned = [line.split()[0] for line in log if line.startswith("  ")]
    assert planned == PARTS  # the plan, in the order the parts run
    assert [line.split()[0] for line in log if "skipped" in line] == PARTS
    assert not list(tmp_path.glob("*.csv"))
