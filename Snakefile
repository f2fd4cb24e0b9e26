# ILF: one DAG from feedback training to every table and figure of the paper (docs/workflow.md).
#
#   snakemake all_tables                                   # toy world, configs/toy.yaml (profiles/default)
#   snakemake all --configfile configs/ci.yaml             # the smaller CI toy
#   snakemake --profile slurm all_tables                   # paper world on SLURM (profiles/slurm -> configs/paper.yaml)
#   snakemake results/table1.tex                           # Table 1 of the active config (a copy of results/toy/table1.tex)
#   snakemake results/toy/table1.tex                       # any file by name
#   snakemake --report results/toy/report.zip              # after a run: tables, figures, galleries, provenance
#
# prefetch -> precompute -> train -> generate (per row, in shards) -> metrics (per row) -> summarize -> tables/figures
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# Rules call the `ilf` (and `torchrun`) of the environment that runs Snakemake, e.g. .venv/bin, activated or not.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')


if not workflow.overwrite_configfiles:  # a --configfile replaces the default instead of merging into it

    configfile: "configs/toy.yaml"


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"  # `snakemake --report results/toy/report.zip` (or .html) after a run


# `snakemake --configfile FILE all_tables` reads `all_tables` as a second config file (--configfile takes several):
# the files `all_tables` and `all_figures` at the top of the repository hold `_target: <their name>`, which makes the
# default target that one, so the command works as typed (and as `snakemake all_tables --configfile FILE`).
TARGET = config.get("_target", "all")


rule all:
    default_target: True
    input:
        [table_files(), active_table_files(), table_html_files()] if TARGET != "all_figures" else [],
        [figure_files(), L.browse_dir()] if TARGET != "all_tables" else [],
        L.summary() if TARGET == "all" else [],


rule all_tables:
    input:
        table_files(),
        active_table_files(),
        table_html_files(),


rule all_figures:
    input:
        figure_files(),
        L.browse_dir(),  # the image browser: <out_dir>/browse/index.html


include: "workflow/rules/prefetch.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/report.smk"
