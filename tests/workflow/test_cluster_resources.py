"""SLURM job layout of the paper and modern DAGs, as the installed snakemake-executor-plugin-slurm builds it.

The real Snakefile is loaded with configs/paper.yaml (and configs/modern.yaml) and the SLURM profile's settings (account and partition
filled in); every job's evaluated resources go through the plugin's own submit builder
(`get_submit_command` + `set_gres_string`, what its executor calls before `sbatch`). For every training run:
GPUs per node as GRES, one task per node (only through `srun` for several nodes), CPUs and memory per node
as the config says. Toy rules ask for toy resources, file-moving rules are local rules.
"""
from __future__ import annotations

import re
import shlex
from contextlib import contextmanager

import pytest
import yaml

pytest.importorskip("snakemake_executor_plugin_slurm")
from snakemake.api import SnakemakeApi  # noqa: E402
from snakemake.resources import Resources  # noqa: E402
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings, StorageSettings  # noqa: E402
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402

from ilf.harness.workflow_config import REPO_ROOT  # noqa: E402

pytestmark = pytest.mark.slow
PROFILE = yaml.safe_load((REPO_ROOT / "profiles/slurm/config.yaml").read_text())


def profile_resources() -> Resources:
    res = dict(PROFILE["default-resources"], slurm_account="acct", slurm_partition="gpu")
    return Resources.parse([f"{k}={v!r}" for k, v in res.items()], allow_expressions=True, defaults="full")


@contextmanager
def dag_of(configfile: str, config: dict, targets: set[str]):
    """The real workflow's DAG (every job, forced) as Snakemake's own API builds it."""
    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        wapi = api.workflow(resource_settings=ResourceSettings(default_resources=profile_resources()),
                            config_settings=ConfigSettings(configfiles=[REPO_ROOT / configfile], config=config),
                            storage_settings=StorageSettings(), workdir=REPO_ROOT, snakefile=REPO_ROOT / "Snakefile")
        wf = wapi.dag(DAGSettings(targets=targets, forceall=True)).workflow_api._workflow
        wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        wf._build_dag()
        yield wf


def sbatch_line(job) -> str:
    """What the plugin's executor submits for this job (its `run_job`: builder + GRES string)."""
    params = {"run_uuid": "ilf_RUN", "slurm_logfile": "slurm.log", "comment_str": f"rule_{job.rule.name}",
              "account": " -A acct", "partition": " -p gpu", "workdir": str(REPO_ROOT)}
    return get_submit_command(job, params) + set_gres_string(job)


def opts(line: str) -> dict[str, str]:
    out = {}
    for tok in shlex.split(line)[1:]:
        if tok.startswith("--") and "=" in tok:
            key, val = tok.split("=", 1)
            out[key] = val
    for key, val in re.findall(r"(--mem|-t) (\S+)", line):
        out[key] = val
    return out


@pytest.fixture(scope="module")
def paper():
    with dag_of("configs/paper.yaml", {"launcher": "srun"}, {"all_tables"}) as wf:
        yield wf


@pytest.fixture(scope="module")
def modern():
    """configs/modern.yaml (FLUX.1-dev, SD3.5-large, Sana, Qwen-Image, Wan2.1) as `--configfile` on the SLURM profile."""
    with dag_of("configs/modern.yaml", {"launcher": "srun"}, {"all_tables"}) as wf:
        yield wf


def test_every_paper_training_run_is_laid_out_per_node(paper):
    check_training_layout(paper, "configs/paper.yaml")


def test_every_modern_training_run_is_laid_out_per_node(modern):
    check_training_layout(modern, "configs/modern.yaml")
    nodes = {j.wildcards["run"]: j.resources["nodes"] for j in modern.dag.jobs if j.rule.name == "train"}
    assert nodes == {"flux1_dev": 2, "sd35_large": 4, "sana_1600m": 1, "wan21_t2v_1_3b": 2}  # FLUX/SD3.5/Wan: several nodes of 8 GPUs each


def test_modern_jobs_ask_for_one_gpu_and_no_more_threads_than_cpus(modern):
    rules = set()
    for job in modern.dag.jobs:
        if job.rule.name in modern._localrules or job.rule.norun:
            continue
        rules.add(job.rule.name)
        o = opts(sbatch_line(job))
        assert job.threads <= int(o["--cpus-per-task"]), job.rule.name
        if job.rule.name in ("generate_merge", "metrics", "precompute"):  # one shard: generate_merge generates
            assert o["--gpus"] == "1" and o["--mem"] == "64000", (job.rule.name, o)
    assert {"precompute", "train", "generate_merge", "metrics", "summarize", "tables"} <= rules, rules


def check_training_layout(wf, configfile: str) -> None:
    """Every training run of `configfile` is a train job laid out per node as the config says (sbatch line and
    launcher)."""
    cfg = yaml.safe_load((REPO_ROOT / configfile).read_text())["training"]
    jobs = {j.wildcards["run"]: j for j in wf.dag.jobs if j.rule.name == "train"}
    assert set(jobs) == set(cfg)  # every training run of the config is in the DAG
    for run, spec in cfg.items():
        line = sbatch_line(jobs[run])
        o = opts(line)
        nodes, gpus = spec.get("nodes", 1), spec["gpus"]
        assert o["--gres"] == f"gpu:{gpus}", line  # GPUs per node
        assert "--gpus=" not in line and "--ntasks-per-gpu" not in line, line
        assert o["--nodes"] == str(nodes), line
        assert o["--cpus-per-task"] == str(spec.get("cpus", 8 * gpus)), line  # one task: all CPUs of a node
        assert o["--mem"] == str(spec["mem_mb"]), line  # --mem is per node
        assert o["-t"] == str(spec["runtime"]), line
        shell = jobs[run].shellcmd
        assert shell.startswith("( ") and shell.endswith(f" ) > {jobs[run].log[0]} 2>&1"), shell
        if nodes > 1:
            assert o["--ntasks"] == str(nodes), line  # one task per node
            launch = shell.split("; fi; ", 1)[1]  # after resolving the rendezvous host (or stopping)
            assert launch.startswith(f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 "
                                     f"--cpus-per-task={o['--cpus-per-task']} torchrun --nnodes={nodes} "
                                     f"--nproc_per_node={gpus} "), shell
            assert "SLURM_JOB_NODELIST" not in shell
        else:
            assert "--ntasks" not in line, line  # SLURM's default: one task
            assert shell.startswith(f"( torchrun --standalone --nnodes=1 --nproc_per_node={gpus} -m ilf.cli train "), shell
            assert "mpi" not in jobs[run].resources.keys()  # the job-step plugin wraps it in `srun -n1`
        print(f"{run}: {line}")


def test_single_gpu_jobs_and_local_rules(paper):
    seen = {}
    for job in paper.dag.jobs:
        seen.setdefault(job.rule.name, job)
    for rule in ("generate_shard", "metrics", "precompute", "features"):
        if rule in seen:
            line = sbatch_line(seen[rule])
            o = opts(line)
            assert o["--gpus"] == "1" and o["--cpus-per-task"] == "8" and o["--mem"] == "64000", (rule, o)
            assert "--gres" not in o and "--nodes" not in o, line
            print(f"{rule}: {line}")
    local = {name for name in seen if seen[name].rule.name in paper._localrules}
    assert {"share_images", "active_table", "prefetch"} <= local, local
    assert not {"train", "generate_shard", "metrics"} & local


def test_toy_jobs_fit_a_two_cpu_node_without_gpus():
    """configs/ci.yaml on the SLURM profile: every submitted job fits the 1-node test cluster (2 CPUs, no GPU)."""
    with dag_of("configs/ci.yaml", {"launcher": "srun"}, {"all"}) as wf:
        for job in wf.dag.jobs:
            if job.rule.name in wf._localrules or job.rule.norun:
                continue
            line = sbatch_line(job)
            o = opts(line)
            assert "--gres" not in o and "--gpus" not in o, line
            assert int(o["--cpus-per-task"]) <= 2 and int(o["--mem"]) <= 4000 and o.get("--nodes", "1") == "1", line
            # the job's threads (OMP_NUM_THREADS inside it) fit the CPUs it asked for: two train jobs of 2 threads
            # on 1 CPU each ran 6x slower on the 2-CPU test node
            assert job.threads <= int(o["--cpus-per-task"]), (job.rule.name, job.threads, line)


def test_no_job_runs_more_threads_than_cpus_it_asks_for(paper):
    for job in paper.dag.jobs:
        if job.rule.name not in paper._localrules and not job.rule.norun:
            assert job.threads <= int(opts(sbatch_line(job))["--cpus-per-task"]), job.rule.name


FAKE_SLURM = {  # stand-ins for the SLURM client tools of a 2-node allocation, logging what they were asked
    "squeue": 'echo "squeue $*" >> "$LOG"; [ "$*" = "-h -o %N -j 99" ] && echo "node-a[01-02]"',
    "scontrol": 'echo "scontrol $*" >> "$LOG"; [ "$*" = "show hostnames node-a[01-02]" ] && printf "node-a01\\nnode-a02\\n"',
    "srun": 'echo "srun $* | NODELIST=${SLURM_JOB_NODELIST:-unset}" >> "$LOG"; while [ "${1#--}" != "$1" ]; do shift; done; exec "$@"',
    "torchrun": 'echo "torchrun $*" >> "$LOG"',
}


def run_through_jobstep(job, tmp_path, monkeypatch, fakes: dict[str, str] = FAKE_SLURM,
                        unset: tuple[str, ...] = (), expect: str = "ok") -> list[str]:
    """Run the job as the slurm-jobstep plugin's own `Executor.run_job` does inside the batch script (its
    environment scrubbing, its srun wrapping or not), with SLURM's client tools faked (`fakes`; no other SLURM
    tool is on PATH) and the variables `unset` removed; returns their log, then the rule's log."""
    import shutil
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm_jobstep import Executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed"):  # all the rule needs besides the SLURM tools and bash builtins
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("LOG", str(log))
    # what a batch script of `sbatch --nodes=2 --ntasks=2 --gres=gpu:8` sees
    for k, v in {"SLURM_JOB_ID": "99", "SLURM_JOBID": "99", "SLURM_JOB_NODELIST": "node-a[01-02]", "SLURM_NNODES": "2",
                 "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "64", "SLURM_GPUS_ON_NODE": "8"}.items():
        monkeypatch.setenv(k, v)
    for k in unset:
        monkeypatch.delenv(k)
    # in place of the Snakemake call inside the job: the rule's shell command as that Snakemake runs it (bash,
    # the Snakefile's prefix; outputs and log to tmp)
    rule_log = tmp_path / "rule.log"
    rule = ("set -euo pipefail; " + job.shellcmd.rsplit(" > ", 1)[0].replace(" --out ", f" --out {tmp_path}/")
            + f" > {rule_log} 2>&1")
    command = f"bash -c {shlex.quote(rule)}"
    done = []
    fake = SimpleNamespace(
        format_job_exec=lambda j: command, logger=SimpleNamespace(debug=lambda *a: None, error=lambda *a: None),
        workflow=SimpleNamespace(executor_settings=SimpleNamespace(pass_command_as_script=False, array_execs="")),
        job_array_task=False, gpu_job=None, report_job_submission=lambda info: None,
        report_job_success=lambda info: done.append("ok"), report_job_error=lambda info: done.append("error"))
    Executor.run_job(fake, job)
    calls = log.read_text().splitlines() if log.exists() else []
    assert done == [expect], calls
    return calls + (rule_log.read_text().splitlines() if rule_log.exists() else [])


def test_multi_node_rendezvous_resolves_inside_the_job_through_the_jobstep_plugin(paper, tmp_path, monkeypatch):
    job = next(j for j in paper.dag.jobs if j.rule.name == "train" and j.wildcards["run"] == "pixart_alpha_1024")
    calls = run_through_jobstep(job, tmp_path, monkeypatch)
    srun = next(c for c in calls if c.startswith("srun "))
    torchrun = next(c for c in calls if c.startswith("torchrun "))
    assert srun.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 torchrun")
    assert srun.endswith("NODELIST=unset")  # the plugin stripped it: the Snakefile must not rely on it
    assert "--nnodes=2 --nproc_per_node=8 --rdzv_id=99 --rdzv_backend=c10d --rdzv_endpoint=node-a01:29500" in torchrun


NO_NODE = {  # SLURM tools that cannot name the allocation's nodes, each way it happens
    "scontrol_missing": ({k: v for k, v in FAKE_SLURM.items() if k != "scontrol"}, ()),
    "scontrol_fails": ({**FAKE_SLURM, "scontrol": 'echo "scontrol: error: Invalid hostlist" >&2; exit 1'}, ()),
    "scontrol_empty": ({**FAKE_SLURM, "scontrol": 'echo "scontrol $*" >> "$LOG"'}, ()),
    "squeue_missing": ({k: v for k, v in FAKE_SLURM.items() if k != "squeue"}, ()),
    "squeue_fails": ({**FAKE_SLURM, "squeue": 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1'}, ()),
    "squeue_empty": ({**FAKE_SLURM, "squeue": 'echo "squeue $*" >> "$LOG"'}, ()),
    "no_job_id": (FAKE_SLURM, ("SLURM_JOB_ID", "SLURM_JOBID")),
}


@pytest.mark.parametrize("case", sorted(NO_NODE))
def test_multi_node_job_without_a_resolvable_node_stops_before_torchrun(paper, tmp_path, monkeypatch, case):
    """A node list SLURM cannot give (tool missing, failing or silent; no job id): the job fails at once with
    one line in its log, and neither srun nor torchrun runs (never a rendezvous endpoint of ':29500')."""
    fakes, unset = NO_NODE[case]
    job = next(j for j in paper.dag.jobs if j.rule.name == "train" and j.wildcards["run"] == "pixart_alpha_1024")
    lines = run_through_jobstep(job, tmp_path, monkeypatch, fakes, unset, expect="error")
    assert not [c for c in lines if c.startswith(("srun ", "torchrun "))], lines
    errors = [c for c in lines if ": error: " in c and c.startswith("train ")]
    assert errors == ["train pixart_alpha_1024: error: cannot resolve the rendezvous host of this 2-node job "
                      f"(SLURM job {'unset' if unset else 99}: squeue -h -o %N -j, then scontrol show hostnames, "
                      "named no node); torchrun not started"], lines


def test_single_node_training_runs_in_the_plugins_srun_step(paper):
    """No `mpi` resource: the job-step plugin wraps the rule in `srun -n1 --cpus-per-task=C --nodes=1` (the step
    gets the job's GRES GPUs by default) and the rule starts `torchrun --standalone`."""
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    job = next(j for j in paper.dag.jobs if j.rule.name == "train" and j.wildcards["run"] == "pixart_alpha_512")
    assert (get_cpu_setting(job, None), get_gpu_setting(job), get_node_setting(job)) == ("--cpus-per-task=64", "",
                                                                                          "--nodes=1")
