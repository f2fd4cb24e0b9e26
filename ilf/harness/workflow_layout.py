"""The workflow's one path layout: where every file of a run goes (the formats of docs/formats.md).

`ilf.harness.workflow_config` resolves configs with it, `workflow/rules/common.smk` and `ilf generate` call it;
nothing else builds workflow paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """Where the workflow writes everything, relative to the repository root (the working directory)."""

    out_dir: str
    runs_dir: str

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> "Layout":
        out = str(cfg["out_dir"]).rstrip("/")
        return cls(out, str(cfg.get("runs_dir") or f"{out}/runs").rstrip("/"))

    def resolved_config(self) -> str:
        return f"{self.out_dir}/workflow_config.json"

    def row_dir(self, name: str) -> str:
        return f"{self.out_dir}/rows/{name}"

    @staticmethod
    def shard_records(row_dir: str, shard: int, num_shards: int) -> str:
        return f"{row_dir}/shards/shard-{shard:03d}-of-{num_shards:03d}.jsonl"

    def run_dir(self, run: str) -> str:
        return f"{self.runs_dir}/{run}"

    def train_config(self, run: str) -> str:
        return f"{self.run_dir(run)}/train_config.yaml"

    def checkpoint_dir(self, run: str, iteration: int | None) -> str:
        """The training run layout's `<run_dir>/final/` or `<run_dir>/checkpoints/iter_{N:06d}/`."""
        return f"{self.run_dir(run)}/final" if iteration is None else f"{self.run_dir(run)}/checkpoints/iter_{iteration:06d}"

    def latents_dir(self, name: str) -> str:
        return f"{self.out_dir}/latents/{name}"

    def summary(self) -> str:
        return f"{self.out_dir}/summary.csv"

    def row_csv(self, name: str) -> str:
        return f"{self.out_dir}/rows/{name}.csv"

    def table(self, table: str, vs_paper: bool = False) -> str:
        return f"{self.out_dir}/{table}{'_vs_paper' if vs_paper else ''}.tex"

    def figures_dir(self) -> str:
        return f"{self.out_dir}/figures"

    def table_html(self, table: str) -> str:
        """The report's HTML page of a table (this run beside the paper's numbers), beside the .tex."""
        return f"{self.out_dir}/{table}.html"

    def summary_html(self) -> str:
        return f"{self.out_dir}/summary.html"

    def browse_dir(self) -> str:
        """The static image browser (`ilf browse`): open <browse_dir>/index.html."""
        return f"{self.out_dir}/browse"

    def gallery_dir(self) -> str:
        """The Snakemake report's per-row image galleries."""
        return f"{self.out_dir}/report/gallery"

    def features_dir(self, name: str) -> str:
        return f"{self.out_dir}/features/{name}"

    def log(self, rule: str, name: str) -> str:
        return f"{self.out_dir}/logs/{rule}/{name}.log"
