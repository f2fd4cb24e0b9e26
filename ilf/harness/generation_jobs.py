"""Several rows per generation / metrics job (`rows_per_job`): which rows share one process.

A toy job spends ~10 s of its ~15-30 s importing torch, diffusers and transformers on 2 CPUs; grouping rows
pays that once per group. Read by the workflow (`workflow/rules/common.smk`) when it builds its rules.
"""
from __future__ import annotations

import re
from typing import Any

from .workflow_config import generation_rows, metrics_for_dir, prompt_specs


def generation_cost(row: dict[str, Any]) -> int:
    """A row's generation work as its baseline's block forwards (images x steps x blocks): what
    `generation_jobs` balances and the workflow's job priorities order by. The method is left out on purpose, so
    that editing a row's cache or feedback settings never moves rows between jobs (only images or steps do)."""
    from .prompts import load_prompt_set

    images = 0
    for spec in prompt_specs(row):
        try:
            n = len(load_prompt_set(spec["set"], spec["num_prompts"]))
        except Exception:  # a prompt set whose file is not fetched yet: its requested size, or 1000
            n = spec["num_prompts"] or 1000
        images += n * int(spec["images_per_prompt"])
    return images * int(row["steps"]) * int(row["num_blocks"])


def generation_jobs(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Jobs that generate (and score) several image folders in one process: job name -> owner rows.

    With `rows_per_job: k > 1`, owner rows of one shard that share backbone, metric list and whether they need
    a feedback checkpoint form a group, cut into ceil(size / k) jobs of at most k rows with about equal
    `generation_cost` (largest row first into the cheapest job; config order within a job). Rows left out (every
    row when k = 1, the default, and sharded rows) keep one job per row. A row's images do not depend on the
    job it is in (tests/harness/test_generation_jobs.py)."""
    k = int(cfg.get("rows_per_job", 1))
    if k <= 1:
        return {}
    groups: dict[tuple[str, str, tuple[str, ...]], list[dict[str, Any]]] = {}
    for r in generation_rows(cfg):
        if int(r["shards"]) == 1:
            kind = "ilf" if r["method"] == "ilf" else "other"
            groups.setdefault((r["backbone"], kind, tuple(metrics_for_dir(cfg, r["name"]))), []).append(r)
    jobs: dict[str, list[str]] = {}
    for (backbone, kind, _), rows in groups.items():
        cost = {r["name"]: generation_cost(r) for r in rows}
        order = {r["name"]: i for i, r in enumerate(rows)}
        bins: list[list[str]] = [[] for _ in range(-(-len(rows) // k))]
        for name in sorted(cost, key=lambda n: -cost[n]):
            min((b for b in bins if len(b) < k), key=lambda b: sum(cost[x] for x in b)).append(name)
        for j, members in enumerate(bins):
            job = re.sub(r"[^A-Za-z0-9]+", "_", f"{backbone}_{kind}_{j + 1}")
            while job in jobs:
                job += "_"
            jobs[job] = sorted(members, key=order.__getitem__)
    return jobs
