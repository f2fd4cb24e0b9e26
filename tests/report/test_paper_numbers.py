"""configs/paper_numbers.csv: parses, is complete, and its block counts follow METHOD.md's formulas."""
from __future__ import annotations

import pandas as pd
import pytest

from ilf import CacheConfig, expected_block_forwards
from ilf.report.common import METHODS, table_numbers
from ilf.report.paper_numbers import analytic_block_forwards, load_paper_numbers


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_numbers()


def test_parses_and_is_complete(paper):
    assert paper.groupby("table").size().to_dict() == {"1": 16, "2": 6, "3": 6, "4": 12, "5": 6, "6": 5}
    assert paper["method"].isin(METHODS).all()
    assert paper["paper_row"].str.match(r"^t[1-6]/[a-z0-9-]+/[a-z0-9-]+$").all()
    assert all(table_numbers(t) == {int(t)} for t in paper["table"])
    refs = paper["reference_paper_row"].dropna()
    assert refs.isin(paper["paper_row"]).all()
    t1 = paper.set_index("paper_row")
    assert t1.loc["t1/pixart-alpha-1024/ilf", "image_reward"] == 91.71
    assert t1.loc["t4/pixart-sigma-512/ilf", "clipiqa_colorful"] == 70.96
    assert t1.loc["t2/dit-xl-2-256/ilf-40", "fid_imagenet"] == 3.31
    assert t1.loc["t5/pixart-alpha-512/loop-22-27", "clipiqa_noisy"] == 18.05


def test_block_counts_follow_method_md(paper):
    """Every row whose settings the paper prints reproduces its printed block count, except Table 6."""
    checked = 0
    for _, row in paper.iterrows():
        analytic = analytic_block_forwards(row)
        if row["table"] == "6" or analytic is None:
            continue
        assert analytic == row["block_forwards"], row["paper_row"]
        checked += 1
    assert checked == 16 + 3 + 6 + 12 + 6
    by = paper.set_index("paper_row")["block_forwards"]
    assert (by["t1/pixart-alpha-512/cache"], by["t4/pixart-alpha-512/cache"]) == (326, 380)
    assert (by["t1/pixart-alpha-512/ilf"], by["t4/pixart-alpha-512/ilf"], by["t3/pixart-alpha-512/loop-0-5"]) == (332, 388, 420)


def test_known_inconsistencies_are_what_method_md_says(paper):
    dit = paper[(paper["table"] == "2") & (paper["method"] == "ilf")]
    assert all(analytic_block_forwards(r) is None for _, r in dit.iterrows())  # loop / schedule not printed
    assert ((dit["block_forwards"] - 28 * dit["steps"]) == 24).all()
    t6 = paper[paper["table"] == "6"]
    assert (t6["block_forwards"] == 440).all()
    assert all(analytic_block_forwards(r) == 420 for _, r in t6.iterrows())  # c = 14 as the text says
    assert expected_block_forwards(CacheConfig("inner", 12, 2), 28, 20) == 440  # what 440 implies
