"""benchmarks/gpu_smoke.sh in its CPU mode (tiny configs): every case passes and is logged."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_smoke_cpu_mode(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_smoke.sh", "--cpu", "--steps", "2", "--compile-steps", "3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "smoke.log").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [l for l in log.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert not [l for l in lines if l.startswith("FAIL")]
    # 2 backbones x 2 dtypes x (3 methods + 6 peers), 2 training steps, 2 compiled pipelines
    assert len(lines) == 2 * 2 * (3 + 6) + 2 + 2
    assert sum(" dbcache-static " in l for l in lines) == 4  # the peers ran on both backbones and dtypes
    assert any("compiled ilf" in l and "breaks 0" in l for l in lines)
