"""torchrun DDP (gloo, CPU): 2 processes reach the 1-process result for the same global batch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
from train_utils import tiny_config, tiny_train_pipeline  # noqa: E402

from ilf.train import precompute, train  # noqa: E402
from tolerances import tiny_pipeline_tol


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_ddp_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    task = "t2i"
    cfg = tiny_config(task, tmp_path / "lat")
    precompute(cfg, tmp_path / "lat", pipeline=tiny_train_pipeline(task), progress=False)
    # one process: global batch 4 as 2 micro-batches of 2
    one = tiny_config(task, tmp_path / "lat", global_batch_size=4, micro_batch_size=2, iterations=3, checkpoint_interval=3)
    train(one, tmp_path / "one", pipeline=tiny_train_pipeline(task), progress=False)
    # two processes: the same global batch as 2 ranks x 2 micro-batches of 1
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HELPERS.parents[1])}
    res = subprocess.run([str(torchrun) if torchrun.exists() else "torchrun", "--nproc_per_node", "2",
                          "--standalone", str(HELPERS / "train_utils.py"), task, str(tmp_path / "lat"),
                          str(tmp_path / "two"), "4", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "final" / "ilf_feedback.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "ilf_feedback.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        # micro-batches of 1 vs 2 and the all-reduce's sum order: rounding of 3 iterations of forward + backward
        tol = tiny_pipeline_tol(3 * 5, 3)
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol * float(a[k].abs().max()), msg=k)
    assert (a["scales"].abs() > 0).all()
    ckpt = tmp_path / "two" / "checkpoints" / "iter_000003"
    assert (ckpt / "rng_rank000.safetensors").is_file() and (ckpt / "rng_rank001.safetensors").is_file()
