"""SLURM job layout of the paper DAG, as the installed snakemake-executor-plugin-slurm builds it.

The real Snakefile is loaded with configs/paper.yaml and the SLURM profile's settings (account and partition
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


def test_every_paper_training_run_is_laid_out_per_node(paper):
    cfg = yaml.safe_load((REPO_ROOT / "configs/paper.yaml").read_text())["training"]
    jobs = {j.wildcards["run"]: j for j in paper.dag.jobs if j.rule.name == "train"}
    assert set(jobs) == set(cfg)  # every training run of the paper config is in the DAG
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
        if nodes > 1:
            assert o["--ntasks"] == str(nodes), line  # one task per node
            assert shell.startswith(f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 "
                                    f"--cpus-per-task={o['--cpus-per-task']} torchrun --nnodes={nodes} "
                                    f"--nproc_per_node={gpus} "), shell
            assert "SLURM_JOB_NODELIST" not in shell
        else:
            assert "--ntasks" not in line, line  # SLURM's default: one task
            assert shell.startswith(f"torchrun --standalone --nnodes=1 --nproc_per_node={gpus} -m ilf.cli train "), shell
            assert "mpi" not in jobs[run].resources.keys()  # the job-step plugin wraps it in `srun -n1`
        print(f"{run}: {line}")


def test_single_gpu_jobs_and_local_rules(paper):
    seen = {}
    for job in paper.dag.jobs:
        seen.setdefault(job.rule.name, job)
    for rule in ("generate_shard", "metrics", "precompute", "features"):
        if rule in seen:
            o = opts(sbatch_line(seen[rule]))
            assert o["--gpus"] == "1" and o["--cpus-per-task"] == "8" and o["--mem"] == "64000", (rule, o)
    local = {name for name in seen if seen[name].rule.name in paper._localrules}
    assert {"share_images", "active_table", "resolved_config", "prefetch"} <= local, local
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
