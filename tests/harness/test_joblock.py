"""ilf.harness.joblock: one writer per output folder, taken over only from a holder that is gone."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ilf.harness.joblock import JobLockedError, acquire, holder_alive, job_lock, release

HOST = socket.gethostname()


def write_holder(path: Path, **holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder))


@pytest.fixture()
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture()
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def no_slurm(job):
    raise AssertionError(f"squeue must not be asked for a local holder (job {job})")


def test_lock_names_holder_and_is_released(tmp_path):
    lock = tmp_path / "run" / ".ilf-train.lock"
    with job_lock(lock, job_state=no_slurm) as me:
        held = json.loads(lock.read_text())
        assert held == me and held["host"] == HOST and isinstance(held["pid"], int) and "slurm_job_id" in held
    assert not lock.exists()


def test_live_local_holder_refuses_a_second_writer(tmp_path, live_pid):
    lock = tmp_path / ".ilf-train.lock"
    write_holder(lock, slurm_job_id=None, host=HOST, pid=live_pid)
    with pytest.raises(JobLockedError, match=f"pid {live_pid}.*refusing"):
        acquire(lock, job_state=no_slurm)
    assert json.loads(lock.read_text())["pid"] == live_pid  # untouched


def test_dead_local_holder_is_taken_over(tmp_path, dead_pid):
    lock = tmp_path / ".ilf-train.lock"
    write_holder(lock, slurm_job_id=None, host=HOST, pid=dead_pid)
    me = acquire(lock, job_state=no_slurm)
    assert json.loads(lock.read_text()) == me and me["pid"] != dead_pid
    release(lock, me)
    assert not lock.exists() and not list(tmp_path.glob("*.stale.*"))


@pytest.mark.parametrize("state", ["RUNNING", "PENDING", "COMPLETING", "SUSPENDED"])
def test_live_slurm_holder_refuses(tmp_path, state, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock = tmp_path / ".lock"
    write_holder(lock, slurm_job_id="4242", host="node-a01", pid=1)
    asked = []
    with pytest.raises(JobLockedError, match="SLURM job 4242.*scancel 4242"):
        acquire(lock, job_state=lambda job: asked.append(job) or state)
    assert asked == ["4242"]


@pytest.mark.parametrize("state", [None, "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL"])
def test_finished_slurm_holder_is_taken_over(tmp_path, state, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "5000")
    lock = tmp_path / ".lock"
    write_holder(lock, slurm_job_id="4242", host="node-a01", pid=1)
    me = acquire(lock, job_state=lambda job: state)
    assert json.loads(lock.read_text())["slurm_job_id"] == "5000" == me["slurm_job_id"]


def test_unknown_slurm_state_counts_as_alive():
    def broken(job):
        raise RuntimeError("squeue: error: slurm_load_jobs error: Unable to contact slurm controller")

    alive, why = holder_alive({"slurm_job_id": "7", "host": "n1", "pid": 3}, {"slurm_job_id": None, "host": HOST,
                                                                              "pid": 1}, broken)
    assert alive and "unknown" in why


def test_same_slurm_job_earlier_process_is_taken_over(tmp_path, dead_pid, live_pid):
    me = {"slurm_job_id": "77", "host": HOST, "pid": 123456789}
    assert not holder_alive({"slurm_job_id": "77", "host": HOST, "pid": dead_pid}, me, no_slurm)[0]
    assert holder_alive({"slurm_job_id": "77", "host": HOST, "pid": live_pid}, me, no_slurm)[0]


def test_other_host_without_slurm_cannot_be_checked():
    alive, why = holder_alive({"slurm_job_id": None, "host": "elsewhere", "pid": 1},
                              {"slurm_job_id": None, "host": HOST, "pid": 2}, no_slurm)
    assert alive and "cannot be checked" in why


def test_half_written_lock_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text('{"slurm_job_')
    me = acquire(lock, job_state=no_slurm)
    assert json.loads(lock.read_text()) == me


def test_disabled_lock_writes_nothing(tmp_path):
    with job_lock(tmp_path / ".lock", enabled=False) as me:
        assert me is None
    assert not (tmp_path / ".lock").exists()


HOLD = "from ilf.harness.joblock import job_lock; import sys, time\nwith job_lock(sys.argv[1]):\n    " \
       "print('held', flush=True); time.sleep(60)"


def test_real_processes_one_writer_then_takeover_after_kill(tmp_path):
    """A process holds the lock; a second one refuses; after SIGKILL of the first the second takes over."""
    lock = tmp_path / "shards" / "shard-0-of-1.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(JobLockedError, match=f"pid {proc.pid}"):
            acquire(lock, job_state=no_slurm)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads(lock.read_text())["pid"] == proc.pid  # SIGKILL left it behind
    with job_lock(lock, job_state=no_slurm) as me:
        assert json.loads(lock.read_text()) == me


def test_generate_and_train_refuse_while_a_live_job_holds_their_output(tmp_path, live_pid):
    """The call sites: `ilf generate` (per shard) and `ilf train` (per run folder) take the lock first."""
    from ilf.cli import main
    from ilf.harness.generate import generate_row

    row = {"generation_dir": str(tmp_path / "row"), "name": "r", "method": "baseline"}
    write_holder(tmp_path / "row" / "shards" / "shard-001-of-002.lock", slurm_job_id=None, host=HOST, pid=live_pid)
    with pytest.raises(JobLockedError, match=f"pid {live_pid}"):
        generate_row(row, 1, 2, device="cpu")
    run = tmp_path / "run"
    write_holder(run / ".ilf-train.lock", slurm_job_id=None, host=HOST, pid=live_pid)
    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(JobLockedError, match=f"pid {live_pid}"):
        main(["train", "--config", str(repo / "configs/train/toy_t2i.yaml"), "--out", str(run), "--no-progress"])
    assert sorted(p.name for p in run.iterdir()) == [".ilf-train.lock"]  # nothing written
