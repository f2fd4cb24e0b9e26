"""Figures: the Pareto front on a constructed example, and every figure file is written and non-empty."""
from __future__ import annotations

import numpy as np
import pytest
import pandas as pd

from ilf.cli import main
from ilf.harness.features import save_feature_change
from ilf.report.figures import make_figures, pareto_front, strategy_name
from ilf.report.summarize import summarize_rows
from report_fixtures import write_paper_like_results


def test_pareto_front():
    costs = [100, 200, 150, 300, 120, 200, float("nan")]
    quality = [1.0, 3.0, 2.5, 2.9, 0.5, 3.0, 9.0]
    # 120/0.5 is dominated by 100/1.0; 300/2.9 by 200/3.0; the tie at (200, 3.0) keeps both; NaN ignored
    assert pareto_front(costs, quality) == [0, 2, 1, 5]
    # lower-is-better quality (FID): the cheapest point is the only non-dominated one here
    assert pareto_front([1, 2, 3], [5.0, 6.0, 4.0], higher_is_better=False) == [0, 2]


def test_strategy_name():
    assert strategy_name(pd.Series({"t_post": "anneal", "feedback_steps": "all"})) == "anneal"
    assert strategy_name(pd.Series({"t_post": "rescale", "feedback_steps": "0,1,10,11"})) == "rescale + skip"


def test_figures_written(tmp_path):
    rows = write_paper_like_results(tmp_path, images=True)
    rows += [dict(name=f"it{i}-{t}", table="fig7", group="pixart-alpha-512", backbone="pixart-alpha-512", steps=12,
                  method="ilf", feedback=dict(training="a", iteration=i, t_post=t, feedback_steps=fs))
             for i in (1000, 5000) for t, fs in (("rescale", "all"), ("anneal", "skip-inner:8"))]
    from report_fixtures import write_row
    for r in rows[-4:]:
        write_row(tmp_path, r["name"], seconds=[1.0], blocks=388,
                  metrics=dict(image_reward=80 + r["feedback"]["iteration"] / 1000))
    summarize_rows(rows, tmp_path, "paper")
    grid = np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3)
    save_feature_change({f"{w}_{k}_norm": grid for w in ("baseline", "cache") for k in ("over_steps", "over_blocks")},
                        tmp_path / "features" / "tiny", {"backbone": "tiny"})
    save_feature_change({f"{w}_{k}_norm": grid for w in ("baseline", "cache") for k in ("over_steps", "over_blocks")},
                        tmp_path / "elsewhere", {"backbone": "tiny2", "name": "second"})
    assert main(["figures", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "figs")]) == 0
    assert main(["figures", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "figs2"),
                 "--features", str(tmp_path / "features" / "tiny"), "--features", str(tmp_path / "elsewhere")]) == 0
    assert {p.name for p in (tmp_path / "figs2").glob("fig3_*.png")} == {"fig3_feature_over_steps_tiny.png",
                                                                         "fig3_feature_over_steps_second.png"}
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    for stem in ("pareto_block_forwards", "pareto_flops", "pareto_seconds", "fig7_training_iterations", "fig8_quality_vs_time",
                 "qualitative_pixart-alpha-512", "qualitative_dit-xl-2-256", "fig3_feature_over_steps_tiny",
                 "fig4_feature_over_blocks_tiny"):
        for ext in ("png", "pdf"):
            assert f"{stem}.{ext}" in names
            assert (tmp_path / "figs" / f"{stem}.{ext}").stat().st_size > 1000
    assert main(["tables", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "tex")]) == 0
    assert len(list((tmp_path / "tex").glob("*.tex"))) == 12


def test_figures_survive_an_empty_summary(tmp_path):
    paths = make_figures(pd.DataFrame({"row": [], "group": [], "method": []}), tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def _toy_summary() -> pd.DataFrame:
    rows = []
    for method, blocks, acc in (("baseline", [70, 140, 280], [0.92, 0.95, 0.955]), ("cache", [43, 86, 163], [0.90, 0.96, 0.95]),
                                ("ilf", [84, 154, 294], [0.94, 0.95, 0.95])):
        for b, a, steps in zip(blocks, acc, (5, 10, 20)):
            rows.append(dict(row=f"{method}-{steps}", group="toy-c2i", method=method, steps=steps, label=f"toy-c2i {method}",
                             block_forwards_measured=b, seconds_per_image=b / 1000, toy_class_accuracy=a,
                             toy_class_accuracy_ci_low=a - 0.02, toy_class_accuracy_ci_high=a + 0.02,
                             toy_class_accuracy_n=300, toy_fid=2000 - 10 * steps, world="toy"))
    return pd.DataFrame(rows)


def test_pareto_labels_only_the_front_and_draws_intervals(tmp_path, monkeypatch):
    from ilf.report import figures

    figs = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: figs.append(fig) or [])
    df = _toy_summary()
    figures.plot_pareto(df, tmp_path)
    ax = figs[0].axes[0]
    front = pareto_front(list(df["block_forwards_measured"]), list(df["toy_class_accuracy"]))
    numbers = [n for t in ax.texts if not t.get_text().startswith("Pareto") for n in t.get_text().split(",")]
    assert numbers == [str(k + 1) for k in range(len(front))]  # only front points are marked
    listing = [t.get_text() for t in ax.texts if t.get_text().startswith("Pareto front")][0]
    assert listing.count("\n") == len(front) - 1
    for k, i in enumerate(sorted(front, key=lambda i: df.iloc[i]["block_forwards_measured"])):
        assert f"{k + 1}: {figures.short_label(df.iloc[i])}" in listing
    assert len(front) < len(df)  # dominated rows are in the legend (by method), not labelled
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"baseline (3 rows)", "cache (3 rows)", "ilf (3 rows)", "Pareto front"} == set(legend)
    assert ax.get_ylabel() == "toy class acc."  # not toy FID, which ranks fewer steps as better
    bars = [c for c in ax.containers if getattr(c, "has_yerr", False)]
    assert len(bars) == 3


@pytest.mark.parametrize("cost,column,unit", [("flops", "flops_per_image", 1e12), ("seconds", "seconds_per_image", 1.0)])
def test_pareto_in_flops_and_seconds_puts_each_row_at_its_own_cost(tmp_path, monkeypatch, cost, column, unit):
    """The FLOPs figure is not the block-forward figure relabelled: a cache row whose blocks are cheaper (FLUX's
    single-stream blocks) moves along x, and so does the front. Rows without the column are left out."""
    from ilf.report import figures

    figs, stems = [], []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: figs.append(fig) or stems.append(stem.name) or [])
    df = _toy_summary()
    # FLOPs not proportional to block forwards: cache rows skip cheap blocks (half a block's FLOPs per skip)
    cost_values = [b * 3e12 * (0.5 if m == "cache" else 1.0) for b, m in zip(df["block_forwards_measured"], df["method"])]
    df = df.assign(flops_per_image=cost_values) if cost == "flops" else df
    df.loc[0, column] = float("nan")  # e.g. a record written before FLOPs were recorded
    figures.plot_pareto(df, tmp_path, cost=cost)
    assert stems == [f"pareto_{cost}"]
    ax = figs[0].axes[0]
    assert ax.get_xlabel() == figures.PARETO_COSTS[cost][1]
    kept = df.drop(index=0).reset_index(drop=True)
    xs = list(kept[column] / unit)
    front = sorted(pareto_front(xs, list(kept["toy_class_accuracy"])), key=lambda i: xs[i])
    listing = [t.get_text() for t in ax.texts if t.get_text().startswith("Pareto front")][0]
    assert listing.count("\n") == len(front) - 1
    for k, i in enumerate(front):
        assert f"{k + 1}: {figures.short_label(kept.iloc[i])}" in listing
    plotted = sorted(x for c in ax.containers if getattr(c, "has_yerr", False) for x in c.lines[0].get_xdata())
    assert plotted == pytest.approx(sorted(xs), rel=1e-12)  # every row with a cost, at that cost in the axis unit


def test_fig8_uses_a_metric_that_ranks_steps_with_error_bars(tmp_path, monkeypatch):
    from ilf.report import figures

    figs = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: figs.append(fig) or [])
    figures.plot_fig8(_toy_summary().assign(table="fig8"), tmp_path)
    ax = figs[0].axes[0]
    assert ax.get_ylabel() == "toy class acc."
    assert len([c for c in ax.containers if getattr(c, "has_yerr", False)]) == 3
    assert any("300 images per point" in t.get_text() for t in ax.texts)


def _with_fidelity(df: pd.DataFrame) -> pd.DataFrame:
    """`_toy_summary` with PSNR against the 20-step baseline (which has none: it is its own reference)."""
    own = [r == "baseline-20" for r in df["row"]]
    psnr = [float("nan") if o else 20.0 + b / 20 for o, b in zip(own, df["block_forwards_measured"])]
    return df.assign(reference_row="baseline-20", psnr_ref=psnr, psnr_ref_ci_low=[p - 0.5 for p in psnr],
                     psnr_ref_ci_high=[p + 0.5 for p in psnr], psnr_ref_n=[0 if o else 60 for o in own])


def test_pareto_and_fig8_put_a_fidelity_panel_beside_quality(tmp_path, monkeypatch):
    from ilf.report import figures

    figs = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: figs.append(fig) or [])
    df = _with_fidelity(_toy_summary())
    figures.plot_pareto(df, tmp_path)
    figures.plot_fig8(df.assign(table="fig8"), tmp_path)
    for fig in figs:
        quality, fidelity = fig.axes
        assert quality.get_ylabel() == "toy class acc." and fidelity.get_ylabel() == "PSNR (dB)"
        assert "fidelity to baseline-20" in fidelity.get_title()
        bars = [c for c in fidelity.containers if getattr(c, "has_yerr", False)]
        assert sum(len(b.lines[0].get_xdata()) for b in bars) == len(df) - 1  # the reference itself: no point
    assert any("60 images per point" in t.get_text() for t in figs[1].axes[1].texts)
    figures.plot_pareto(_toy_summary(), tmp_path)  # no fidelity metric: one panel, as before
    assert len(figs[-1].axes) == 1


def test_a_fidelity_panel_shows_the_rows_of_one_reference():
    """Values against different references are not comparable: the panel keeps the rows of the reference most rows
    use; two names for the same images (rows that share a folder have the same config_hash) are one reference."""
    from ilf.report.figures import fidelity_rows

    df = pd.DataFrame({"row": ["b20", "t4-b20", "a", "b", "c", "other-ref", "d", "e"],
                       "config_hash": ["h20", "h20", "ha", "hb", "hc", "hx", "hd", "he"],
                       "reference_row": ["b20", "t4-b20", "b20", "t4-b20", "b20", "other-ref", "other-ref", "other-ref"],
                       "psnr_ref": [float("nan"), float("nan"), 30.0, 31.0, 29.0, float("nan"), 20.0, 21.0]})
    rows, name, left_out = fidelity_rows(df, "psnr_ref", df)
    assert list(rows["row"]) == ["a", "b", "c"] and name == "b20" and left_out == 2
