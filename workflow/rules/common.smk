# The one place of the workflow that knows the config and where files go.
# Rules only call the functions below; the layout itself is ilf.harness.workflow_layout.Layout, which the
# `ilf` commands (generate, summarize, ...) read through the resolved <out_dir>/workflow_config.json.
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from ilf.harness.generation_jobs import generation_cost, generation_jobs
from ilf.harness.reference import fidelity_references
from ilf.report.captions import report_about
from ilf.report.common import tag_title
from ilf.harness.workflow_config import (Layout, check_slurm_account, generation_rows, generation_signature,
                                         metrics_for_dir, resolve, tables, training_overrides, training_runs_needed,
                                         OWN_TABLES)

validate(config, schema="../schemas/config.schema.yaml")
CFG = resolve(config)  # raises ILFConfigError naming the key (unknown method, missing training run, steps < 1, ...)
L = Layout.of(CFG)
RESOLVED = L.resolved_config()
GEN_ROWS = {r["name"]: r for r in generation_rows(CFG)}
SHARED = {r["name"]: r["shares_images_with"] for r in CFG["rows"] if r["shares_images_with"]}
# `rows_per_job` > 1 (toy world): several rows per generation and metrics job (rules generate_rows_<job>,
# metrics_rows_<job>); the other rows keep the per-row rules (generate_shard/generate_merge, metrics).
# image folder -> the folder of its reference row's images, for folders scored with psnr_ref / ssim_ref / lpips_ref:
# their metrics jobs read those images too (a dependency of the DAG; ilf.harness.reference)
FIDELITY_REF = fidelity_references(CFG)
ROW_GROUPS = generation_jobs(CFG)
_GROUPED = {r for rows in ROW_GROUPS.values() for r in rows}
SINGLE_ROWS = [r for r in GEN_ROWS if r not in _GROUPED]


def _names(names):
    return "|".join(re.escape(n) for n in names) or "(?!x)x"


wildcard_constraints:
    row=_names(SINGLE_ROWS),
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
# Figure files `ilf figures` writes from the row summary: Figs. 7 and 8, the Pareto fronts (in block forwards, FLOPs
# and seconds per image), a qualitative grid per backbone, and Figs. 3/4 per `features` entry.
FIGURES = ["fig7_training_iterations", "fig8_quality_vs_time", "pareto_block_forwards", "pareto_flops", "pareto_seconds"] + \
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


def write_resolved_config():
    """<out_dir>/workflow_config.json, which every `ilf` command of a job reads: written when the workflow loads
    (dry runs too), only when its content changes. Not a job: Snakemake does not evaluate the rerun triggers of
    the descendants of a job that must run (it expects the run to reach them, which an ancient() input stops), so
    with a config job upstream of every row an edited row kept its old images until a second run."""
    from ilf.io import write_text_atomic

    text = json.dumps(CFG, sort_keys=True) + "\n"
    path = Path(RESOLVED)
    if not (path.is_file() and path.read_text() == text):
        write_text_atomic(path, text)


_check_cluster_account()
write_resolved_config()  # after the account check: a run refused for its account writes nothing


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


def row_checkpoints(rows):
    """The final checkpoints of the rows' training runs (intermediate ones are kept by the same job)."""
    runs = {GEN_ROWS[r]["feedback"]["training"] for r in rows if GEN_ROWS[r]["method"] == "ilf"}
    return [final_checkpoint(run) for run in sorted(runs)]


def training_inputs(wildcards):
    return row_checkpoints([wildcards.row])


def prefetch_marker():
    return [f"{L.out_dir}/prefetch.done"] if CFG["prefetch"] else []


def row_params(wildcards):
    """Everything that changes a row's images: a change re-runs its generation (params rerun trigger)."""
    return generation_signature(GEN_ROWS[wildcards.row])


def row_metrics(wildcards):
    return ",".join(metrics_for_dir(CFG, wildcards.row))


def reference_generation(rows):
    """The generation records of the rows' reference images that other jobs make (inputs of their metrics job)."""
    return sorted({generation_file(FIDELITY_REF[r]) for r in rows if FIDELITY_REF.get(r, r) not in rows})


def metrics_dirs(rows):
    """`--generation-dir D [--reference-dir R]` per row, for one `ilf metrics` process."""
    return " ".join(f"--generation-dir {row_dir(r)}" + (f" --reference-dir {row_dir(FIDELITY_REF[r])}"
                                                       if r in FIDELITY_REF else "") for r in rows)


def group_cost(rows):
    """Block forwards a group of rows generates (job priorities: the longest job starts first)."""
    return sum(generation_cost(GEN_ROWS[r]) for r in rows)


def group_signature(rows):
    """Everything that changes the images of a group's rows (params rerun trigger, as row_params)."""
    return " ".join(generation_signature(GEN_ROWS[r]) for r in rows)


def metric_args():
    opts = CFG["metric_options"]
    args = [f"--{k.replace('_', '-')} {opts[k]}" for k in ("clip_model", "fid_ref", "batch_size", "device") if k in opts]
    return " ".join(args)


def row_csvs():
    return [L.row_csv(r["name"]) for r in CFG["rows"]]


def table_files():
    return [L.table(t) for t in TABLES] + [L.table(t, vs_paper=True) for t in TABLES if t not in OWN_TABLES]


def active_table_files():
    """results/<table>.tex: copies of the active config's tables (`snakemake results/table1.tex`)."""
    return [f"results/{os.path.basename(t)}" for t in table_files()]


def figure_files():
    return [f"{L.figures_dir()}/{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")]


def table_html_files():
    return [L.table_html(t) for t in TABLES]


# ------------------------------------------------------------------------------------- the report
# `snakemake --report results/toy/report.zip`: tables, figures, per-row galleries and provenance, each with a caption
# (workflow/report/*.rst; ABOUT says in words which rows and metrics each table and figure shows).
ABOUT = report_about(CFG)
GALLERY_IMAGES = 8 if CFG["world"] == "toy" else 4  # images per row in the report (the browser has them all)


def _figure_kind(name):
    return next(k for k in ("fig3", "fig4", "fig7", "fig8", "pareto", "qualitative") if name.startswith(k))


FIGURE_CATEGORY = {"fig3": "Fig. 3", "fig4": "Fig. 4", "fig7": "Fig. 7", "fig8": "Fig. 8", "pareto": "Pareto front",
                   "qualitative": "Qualitative grids"}


def figure_outputs():
    """figure_files(), the PNGs marked for the report (category and caption by figure kind)."""
    out = []
    for f in FIGURES:
        kind = _figure_kind(f)
        out += [report(f"{L.figures_dir()}/{f}.png", caption=f"../report/{kind}.rst", category=FIGURE_CATEGORY[kind],
                       subcategory="figure", labels={"figure": f}),
                f"{L.figures_dir()}/{f}.pdf"]
    return out


def table_html_outputs():
    return [report(L.table_html(t), caption=f"../report/{t}.rst", category=tag_title(t), subcategory="table",
                   labels={"table": tag_title(t)}) for t in TABLES]


@functools.lru_cache(maxsize=1)
def _gallery_labels():
    return json.loads(Path(L.gallery_dir(), "labels.json").read_text())


def gallery_labels(wildcards):
    """An image's labels in the report (row, method, steps, block forwards, seconds, prompt, metric values)."""
    return _gallery_labels()[f"{wildcards.tag}/{wildcards.gallery_row}/{wildcards.image}.png"]


def gallery_category(wildcards):
    return tag_title(wildcards.tag)


def feature_files():
    return [feature_file(f["name"]) for f in CFG["features"]]


# ------------------------------------------------------------------------------------- resources
def by_world(toy, paper):
    """A resource value: toy rules ask for toy resources (they must submit on a 1-node, 2-CPU test cluster)."""
    return toy if CFG["world"] == "toy" else paper


def train_resources(run, key, default=None):
    spec = CFG["training"][run]
    return spec.get(key, default)


def train_layout(run):
    """(nodes, GPUs per node, CPUs per node) of a training run; CPUs default to 8 per GPU, 1 without GPUs."""
    spec = CFG["training"][run]
    nodes, gpus = int(spec.get("nodes", 1)), int(spec.get("gpus", 0))
    return nodes, gpus, int(spec.get("cpus", 8 * gpus if gpus else 1))


def train_threads(wildcards):
    """The train rule's threads (OMP_NUM_THREADS inside the job): all its CPUs without GPUs, so that a CPU
    training job never runs more threads than SLURM gave it (toy runs: 1, so two train at once on 2 cores, which
    beats 2 threads each: half of a short toy run is the single-threaded import); 2 with GPUs."""
    nodes, gpus, cpus = train_layout(wildcards.run)
    return 2 if gpus else cpus


def train_slurm(key):
    """One SLURM resource of the train rule, laid out as torchrun needs it: one task per node (`--ntasks` =
    nodes, only for several nodes, through the plugin's `mpi` path), the GPUs per node as GRES (`--gres=gpu:G`,
    never the plugin's `--gpus`, which counts GPUs per job and spawns a task per GPU), and CPUs and memory
    per node (`--cpus-per-task`, `--mem`). None leaves the resource out (tests/workflow/test_cluster_resources.py)."""

    def value(wc):
        nodes, gpus, cpus = train_layout(wc.run)
        multi = nodes > 1 and CFG["launcher"] == "srun"
        return {
            "nodes": nodes,
            "gres": f"gpu:{gpus}" if gpus else None,
            "tasks_per_gpu": 0,  # no --ntasks-per-gpu
            "tasks": nodes if multi else None,
            "mpi": "srun" if multi else None,  # the batch step runs the rule's own `srun ... torchrun` line
            "cpus_per_task": cpus,
            "mem_mb": train_resources(wc.run, "mem_mb", by_world(2000, 16000)),
            "runtime": train_resources(wc.run, "runtime", 60),
        }[key]

    return value


def rdzv_host_or_stop(run, nodes):
    """Shell that sets `rdzv_host` to the rendezvous host of multi-node training, the first node of the job's
    allocation, asked from SLURM inside the job (the job-step plugin strips SLURM_JOB_NODELIST and most SLURM_*
    variables; it keeps SLURM_JOB_ID). When SLURM names no node (no job id, squeue or scontrol missing or
    failing, an empty answer) the job stops at once with one line and exit 2: torchrun never starts with an
    empty rendezvous host (tests/workflow/test_cluster_resources.py)."""
    error = (shlex.quote(f"train {run}: error: cannot resolve the rendezvous host of this {nodes}-node job (SLURM job ")
             + '"${SLURM_JOB_ID:-unset}"'
             + shlex.quote(": squeue -h -o %N -j, then scontrol show hostnames, named no node); torchrun not started"))
    return ('if [ -z "${SLURM_JOB_ID:-}" ] || ! rdzv_nodes=$(squeue -h -o %N -j "$SLURM_JOB_ID") '
            '|| [ -z "$rdzv_nodes" ] || ! rdzv_host=$(scontrol show hostnames "$rdzv_nodes" | sed -n 1p) '
            f'|| [ -z "$rdzv_host" ]; then echo {error} >&2; exit 2; fi; ')


# ------------------------------------------------------------------------------------- training launch
def set_args(overrides):
    """`--set KEY=VALUE` arguments (values as JSON, which the commands read as YAML)."""
    return " ".join(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in overrides.items())


def train_sets(run):
    """The run's overrides, its name, and the intermediate checkpoints rows need kept."""
    return set_args(training_overrides(CFG, run))


def train_launcher(wildcards):
    """`ilf train` (one process), `torchrun --standalone` (one node, several GPUs), or on the SLURM profile
    for several nodes `srun` (one task per node) + torchrun with the rendezvous on the allocation's first node."""
    nodes, gpus, cpus = train_layout(wildcards.run)
    if nodes * max(gpus, 1) == 1:
        return "ilf train"
    if nodes > 1 and CFG["launcher"] == "srun":
        return (rdzv_host_or_stop(wildcards.run, nodes)
                + f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={cpus} "
                f"torchrun --nnodes={nodes} --nproc_per_node={gpus} --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d "
                f'--rdzv_endpoint="$rdzv_host":29500 -m ilf.cli train')
    return f"torchrun --standalone --nnodes=1 --nproc_per_node={max(gpus, 1)} -m ilf.cli train"
