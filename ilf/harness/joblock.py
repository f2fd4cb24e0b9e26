"""One writer per output folder: a lock file naming the job that holds it (SLURM job id, host, pid).

A Snakemake head killed mid-run leaves its SLURM jobs running; a re-run would start a second job writing
the same training run or generation shard. `job_lock(path)` refuses that: it creates `path` exclusively
with the holder's identity, and takes over an existing lock only when its holder is gone: a SLURM job that
`squeue -j` no longer lists as pending/running (or that is this very job, e.g. a requeued or restarted
step), or a local process (no SLURM job) whose pid no longer exists on the same host. A holder whose
liveness cannot be established (`squeue` missing or failing, another host without SLURM) counts as alive;
the error says how to clear it by hand.

    with job_lock(Path(out) / ".ilf-train.lock"):
        ...  # write into out/
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# squeue states of a job that is over (its processes are gone or going): the lock may be taken over.
FINISHED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "TIMEOUT", "REVOKED"}


class JobLockedError(RuntimeError):
    """Another live job holds the folder's lock (the message names it and how to clear it)."""


def holder_identity() -> dict[str, Any]:
    """Who we are: SLURM job id (None outside SLURM), host name, pid, start time (Unix seconds)."""
    return {"slurm_job_id": os.environ.get("SLURM_JOB_ID") or None, "host": socket.gethostname(),
            "pid": os.getpid(), "since": round(time.time(), 3)}


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from `squeue -h -j ID -o %T` ("RUNNING", ...); None if SLURM no longer knows it.

    Raises OSError/RuntimeError when squeue is missing or fails for another reason (liveness unknown)."""
    res = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                         timeout=60)
    if res.returncode != 0:
        if "invalid job id" in res.stderr.lower():
            return None
        raise RuntimeError(f"squeue -j {job_id} failed: {res.stderr.strip()}")
    states = res.stdout.split()
    return states[0] if states else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(holder: dict[str, Any], me: dict[str, Any] | None = None,
                 job_state: Callable[[str], str | None] = slurm_job_state) -> tuple[bool, str]:
    """(alive?, why) for a lock holder record; `job_state` is the SLURM query (injectable for tests)."""
    me = me or holder_identity()
    job = holder.get("slurm_job_id")
    if job and str(job) != str(me.get("slurm_job_id")):
        try:
            state = job_state(str(job))
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            return True, f"SLURM job {job}: state unknown ({err})"
        if state is None or state.upper() in FINISHED_STATES:
            return False, f"SLURM job {job} is {state or 'gone'}"
        return True, f"SLURM job {job} is {state}"
    if job:  # our own SLURM job: an earlier attempt (requeue, restarted step) on the same or another node
        if holder.get("host") == me["host"] and holder.get("pid") != me["pid"] and _pid_alive(int(holder["pid"])):
            return True, f"pid {holder['pid']} of this SLURM job {job} still runs on {holder['host']}"
        return False, f"an earlier process of this SLURM job {job}"
    if holder.get("host") != me["host"]:
        return True, f"pid {holder.get('pid')} on host {holder.get('host')} (cannot be checked from {me['host']})"
    if _pid_alive(int(holder.get("pid", -1))):
        return True, f"pid {holder['pid']} runs on {holder['host']}"
    return False, f"pid {holder.get('pid')} on {holder.get('host')} is gone"


def _describe(holder: dict[str, Any]) -> str:
    job = holder.get("slurm_job_id")
    where = f"host {holder.get('host')}, pid {holder.get('pid')}"
    return f"SLURM job {job} ({where})" if job else where


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # half-written by a writer killed between create and write: a dead holder


def acquire(path: str | Path, job_state: Callable[[str], str | None] = slurm_job_state,
            me: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create the lock file `path` for this process, or raise JobLockedError if a live job holds it.

    A stale lock (holder gone) is replaced. Returns the identity written into the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = me or holder_identity()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile: try again
            alive, why = holder_alive(holder, me, job_state) if holder else (False, "empty lock file")
            if alive:
                hint = (f"scancel {holder['slurm_job_id']}" if holder.get("slurm_job_id")
                        else f"kill {holder.get('pid')} on {holder.get('host')}")
                raise JobLockedError(
                    f"{path.parent} is being written by {_describe(holder)} ({why}); refusing to start a second "
                    f"writer. Wait for it, or stop it ({hint}); if you are sure it is gone, delete {path}.")
            stale = path.with_name(f"{path.name}.stale.{me['host']}.{me['pid']}")
            try:
                os.replace(path, stale)  # one taker wins the rename; the others find the new lock next round
            except FileNotFoundError:
                continue
            if _read(stale) != holder:  # we moved a lock someone created meanwhile: put it back, retry
                os.replace(stale, path)
                time.sleep(0.05)
                continue
            stale.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return me
    raise JobLockedError(f"could not take {path}: it changed hands repeatedly")


def release(path: str | Path, me: dict[str, Any]) -> None:
    """Remove the lock file if it is still ours (a taker after our death may own it now)."""
    path = Path(path)
    if _read(path) == json.loads(json.dumps(me)):
        path.unlink(missing_ok=True)


@contextmanager
def job_lock(path: str | Path, enabled: bool = True,
             job_state: Callable[[str], str | None] = slurm_job_state) -> Iterator[dict[str, Any] | None]:
    """Hold the lock file `path` for the block (no-op when not `enabled`, e.g. a non-zero torch rank)."""
    if not enabled:
        yield None
        return
    me = acquire(path, job_state=job_state)
    try:
        yield me
    finally:
        release(path, me)
