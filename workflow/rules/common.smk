# The one place of the workflow that knows the config and where files go.
# Rules only call the functions below; the layout itself is ilf.harness.workflow_layout.Layout, which the
# `ilf` commands (generate, summarize, ...) read through the resolved <out_dir>/workflow_config.json.
import json
import os
import re
import shlex
import sys

from snakemake.utils import validate

from ilf.harness.workflow_config import (Layout, check_slurm_account, generation_rows, generation_signature,
                                         metrics_for_dir, resolve, tables, training_overrides, training_runs_needed)

validate(config, schema="../schemas/config.schema.yaml")
CFG = resolve(config)  # raises ILFConfigError naming the key (unknown method, missing training run, steps < 1, ...)
L = Layout.of(CFG)
RESOLVED = L.resolved_config()
GEN_ROWS = {r["name"]: r for r in generation_rows(CFG)}
SHARED = {r["name"]: r["shares_images_with"] for r in CFG["rows"] if r["shares_images_with"]}


def _names(names):
    return "|".join(re.escape(n) for n in names) or "(?!x)x"


wildcard_constraints:
    row=_names(GEN_ROWS),
    shared=_names(SHARED),
    shard=r"\d+",
    n=r"\d+",
    run=_names(CFG["training"]),
    latents=_names(CFG["precompute"]),
    feature=_names(f["name"] for f in CFG["features"]),

TRAIN_RUNS = training_runs_needed(CFG)
PRECOMPUTE = sorted({CFG["training"][r]["latents"] for r in TRAIN_RUNS if CFG["training"][r].get("latents")})
TABLES = tables(CFG)
PAPER_NUMBERS = CFG["paper_numbers"]
# Figure files `ilf figures` writes (contract C): Figs. 7 and 8, the Pareto front, a qualitative grid per
# backbone, and Figs. 3/4 per `features` entry.
FIGURES = ["fig7_training_iterations", "fig8_quality_vs_time", "pareto_block_forwards"] + \
    [f"qualitative_{b}" for b in dict.fromkeys(r["backbone"] for r in CFG["rows"])] + \
    [f"fig{k}_feature_{key}_{f['name']}" for f in CFG["features"] for k, key in ((3, "over_steps"), (4, "over_blocks"))]


def _dry_run() -> bool:
    for a in sys.argv[1:]:
        if a in ("--dry-run", "--dryrun", "-n") or (a.startswith("-") and not a.startswith("--") and a[1:].isalpha()
                                                    and "n" in a[1:]):
            return True
    return False


def _check_cluster_account():
    """The SLURM profile must carry a real account: fail before any job is submitted (dry runs only warn)."""
    res = workflow.resource_settings.default_resources
    if not workflow.is_main_process or res is None or "slurm_account" not in dict(res.items()):
        return
    raw = dict(res.items())["slurm_account"].raw
    account = str(raw).strip().strip("'\"") if raw is not None else None
    try:
        check_slurm_account(account)
    except ValueError as err:
        if not _dry_run():
            raise
        print(f"warning (dry run): {err}", file=sys.stderr)


_check_cluster_account()


ENV = "../../environment.yml"  # the conda environment (same pins as requirements.txt) for --sdm conda


# ------------------------------------------------------------------------------------------- paths
def row_pattern(row, name):
    """<out_dir>/rows/<row>/<name> (row may be a wildcard)."""
    return f"{L.out_dir}/rows/{row}/{name}"


def feature_file(feature):
    return f"{L.features_dir(feature)}/features.safetensors"


def log(rule, name):
    return L.log(rule, name)


def row_dir(row):
    return GEN_ROWS[row]["generation_dir"]


def shard_records(row, shard):
    return L.shard_records(row_dir(row), int(shard), num_shards(row))


def num_shards(row):
    return int(GEN_ROWS[row]["shards"])


def generation_file(row):
    return f"{row_dir(row)}/generation.jsonl"


def metrics_summary(row):
    return f"{row_dir(row)}/metrics_summary.json"


def all_metrics_summaries():
    return [metrics_summary(r) for r in GEN_ROWS]


def all_generation_files():
    return [generation_file(r) for r in GEN_ROWS]


def final_checkpoint(run):
    return f"{L.checkpoint_dir(run, None)}/ilf_feedback.safetensors"


def training_inputs(wildcards):
    """The final checkpoint of the row's training run (intermediate ones are kept by the same job)."""
    row = GEN_ROWS[wildcards.row]
    return [final_checkpoint(row["feedback"]["training"])] if row["method"] == "ilf" else []


def prefetch_marker():
    return [f"{L.out_dir}/prefetch.done"] if CFG["prefetch"] else []


def row_params(wildcards):
    """Everything that changes a row's images: a change re-runs its generation (params rerun trigger)."""
    return generation_signature(GEN_ROWS[wildcards.row])


def row_metrics(wildcards):
    return ",".join(metrics_for_dir(CFG, wildcards.row))


def metric_args():
    opts = CFG["metric_options"]
    args = [f"--{k.replace('_', '-')} {opts[k]}" for k in ("clip_model", "fid_ref", "batch_size", "device") if k in opts]
    return " ".join(args)


def row_csvs():
    return [L.row_csv(r["name"]) for r in CFG["rows"]]


def table_files():
    return [L.table(t) for t in TABLES] + [L.table(t, vs_paper=True) for t in TABLES]


def figure_files():
    return [f"{L.figures_dir()}/{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")]


def feature_files():
    return [feature_file(f["name"]) for f in CFG["features"]]


# ------------------------------------------------------------------------------------- training launch
def train_resources(run, key, default=None):
    spec = CFG["training"][run]
    return spec.get(key, default)


def set_args(overrides):
    """`--set KEY=VALUE` arguments (values as JSON, which the commands read as YAML)."""
    return " ".join(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in overrides.items())


def train_sets(run):
    """The run's overrides, its name, and the intermediate checkpoints rows need kept."""
    return set_args(training_overrides(CFG, run))


def train_launcher(wildcards):
    """`ilf train`, or torchrun for several GPUs, through `srun` (one task per node) on the SLURM profile."""
    spec = CFG["training"][wildcards.run]
    nodes, gpus = int(spec.get("nodes", 1)), int(spec.get("gpus", 0))
    if nodes * max(gpus, 1) == 1:
        return "ilf train"
    if CFG["launcher"] == "srun":
        endpoint = "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500"
        return (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 torchrun --nnodes={nodes} "
                f"--nproc_per_node={gpus} --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d --rdzv_endpoint={endpoint} "
                f"-m ilf.cli train")
    return f"torchrun --standalone --nproc_per_node={gpus} -m ilf.cli train"
