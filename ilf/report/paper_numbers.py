"""The paper's printed numbers (Tables 1-6) as a tidy CSV: `configs/paper_numbers.csv`.

One row per printed table row, keyed by `paper_row` (e.g. "t1/pixart-alpha-1024/ilf"); a workflow
config row that reproduces it names that key. Metric columns use the metrics record's names; values are as
printed (ImageReward, CLIP and CLIP-IQA x100). `note` records where the printed numbers disagree
with the printed settings (Table 2's DiT ILF rows, Table 6's c) - see METHOD.md.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ilf.report.common import PAPER_METRICS, is_missing

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "configs" / "paper_numbers.csv"
PAPER_NUM_BLOCKS = 28  # every backbone of the paper (Sec. 4.1)
COLUMNS: tuple[str, ...] = (
    "paper_row", "table", "group", "label", "backbone", "resolution", "method", "steps", "block_forwards",
    "seconds_per_image", "speedup_printed", "reference_paper_row", "loop_start", "loop_end", "feedback_steps",
    "t_post", "cache_location", "cache_num_blocks", "cache_interval", *PAPER_METRICS, "note",
)


def load_paper_numbers(path: str | Path | None = None) -> pd.DataFrame:
    """Read and check the paper-numbers CSV (unique `paper_row`, every expected column present)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.exists():
        raise FileNotFoundError(f"paper numbers not found at {path} (the repository ships configs/paper_numbers.csv)")
    df = pd.read_csv(path, dtype={"table": str, "feedback_steps": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing; expected {list(COLUMNS)}")
    dupes = df["paper_row"][df["paper_row"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"{path}: paper_row {dupes[0]!r} is not unique")
    return df


def analytic_block_forwards(row: pd.Series | dict, num_blocks: int = PAPER_NUM_BLOCKS) -> int | None:
    """Block forwards that a paper row's printed settings imply (METHOD.md formulas), or None if unprinted."""
    from ilf import CacheConfig, FeedbackConfig, expected_block_forwards

    steps = int(row["steps"])
    method = row["method"]
    if method == "baseline":
        return expected_block_forwards(None, num_blocks, steps)
    if method == "cache":
        config = CacheConfig(location=str(row["cache_location"]), num_cached=int(row["cache_num_blocks"]),
                             interval=int(row["cache_interval"]))
        return expected_block_forwards(config, num_blocks, steps)
    if method == "ilf":
        if any(is_missing(row.get(k)) for k in ("loop_start", "loop_end", "feedback_steps")):
            return None
        config = FeedbackConfig(loop_start=int(row["loop_start"]), loop_end=int(row["loop_end"]),
                                feedback_steps=str(row["feedback_steps"]))
        return expected_block_forwards(config, num_blocks, steps)
    return None
