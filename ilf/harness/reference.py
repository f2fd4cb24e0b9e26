"""Which row a row is compared with: the speedups' reference and the fidelity metrics' reference are one row.

A row's reference is its `reference_row` when it names one, else the baseline of its `group` with the most steps
(the paper's 20-step DPM-Solver++ baseline; among equals, one of the same table). `ilf summarize` uses it for
`speedup_*`, the workflow for `psnr_ref` / `ssim_ref` / `lpips_ref` (which image folder a row's metrics job
reads besides its own). Light on purpose: Snakemake imports it when it builds the DAG.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..errors import ILFConfigError

# Per-image metrics against the reference row's image of the same prompt and seed (ilf.metrics.fidelity).
REFERENCE_METRICS: tuple[str, ...] = ("psnr_ref", "ssim_ref", "lpips_ref")


def _tables(value: Any) -> tuple[str, ...]:
    """A row's `table` as a tuple of tags: `[table1, fig8]` and the summary's text `table1,fig8` agree."""
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value)
    return tuple(s.strip() for s in str(value).split(","))


def _steps(row: Mapping[str, Any]) -> float:
    try:
        return float(row.get("steps"))
    except (TypeError, ValueError):
        return math.nan


def pick_reference(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   name_key: str = "name") -> Mapping[str, Any] | None:
    """The row `row` is compared with, among `rows` (config rows: `name_key="name"`; summary records: `"row"`).

    Args:
        row: The row whose reference is wanted; its `reference_row`, `group`, `table` decide.
        rows: Every row of the run (the row itself included).
        name_key: The key holding a row's name.

    Returns:
        The named `reference_row`, else the baseline of the same group with the most steps (one of the same table
        when several tie, else the first in order); None when the group has no baseline.

    Raises:
        ILFConfigError: `reference_row` names no row of `rows`.
    """
    ref = row.get("reference_row")
    if ref is not None and not (isinstance(ref, float) and math.isnan(ref)) and str(ref).strip():
        for r in rows:
            if r.get(name_key) == ref:
                return r
        raise ILFConfigError(f"rows[{row.get(name_key)}].reference_row", ref,
                             f"one of the config's rows {sorted(str(r.get(name_key)) for r in rows)}")
    candidates = [r for r in rows if r.get("method") == "baseline" and r.get("group") == row.get("group")]
    if not candidates:
        return None
    most = max(_steps(r) for r in candidates)
    tops = [r for r in candidates if _steps(r) == most]
    same_table = [r for r in tops if _tables(r.get("table")) == _tables(row.get("table"))]
    return (same_table or tops)[0]


def fidelity_references(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Image folder owner -> the owner of its reference's image folder, for every folder scored with a reference
    metric (a resolved workflow config: rows carry `generation_dir` and `shares_images_with`).

    A folder that is its own reference maps to itself (its metrics job writes no value: identical images).

    Raises:
        ILFConfigError: a row asks for a reference metric but has no reference, or rows that share an image folder
            have references in different folders (their stored values could only match one of them).
    """
    rows = cfg["rows"]
    owner_of = {r["generation_dir"]: (r["shares_images_with"] or r["name"]) for r in rows}
    scored = {r["generation_dir"] for r in rows if set(r.get("metrics") or ()) & set(REFERENCE_METRICS)}
    out: dict[str, str] = {}
    chosen_by: dict[str, str] = {}
    for r in rows:
        if r["generation_dir"] not in scored:
            continue
        ref = pick_reference(r, rows)
        if ref is None:
            asked = [m for m in r.get("metrics") or () if m in REFERENCE_METRICS] or list(REFERENCE_METRICS)
            raise ILFConfigError(f"rows[{r['name']}].reference_row", None,
                                 f"a row to compare with: {asked[0]} needs one (group {r.get('group')!r} has no "
                                 f"baseline; name one with reference_row)")
        owner, ref_owner = owner_of[r["generation_dir"]], owner_of[ref["generation_dir"]]
        if out.setdefault(owner, ref_owner) != ref_owner:
            raise ILFConfigError(f"rows[{r['name']}].reference_row", ref["name"],
                                 f"a reference with the images of {out[owner]!r}, the reference of row "
                                 f"{chosen_by[owner]!r}, which shares its images (one stored {REFERENCE_METRICS[0]} "
                                 f"per image folder)")
        chosen_by.setdefault(owner, r["name"])
    return out
