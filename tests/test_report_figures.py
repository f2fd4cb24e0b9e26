"""Figures: the Pareto front on a constructed example, and every figure file is written and non-empty."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ilf.cli import main
from ilf.harness.features import save_feature_change
from ilf.report.figures import make_figures, pareto_front, strategy_name
from test_report_fixtures import write_paper_like_results


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
    from test_report_fixtures import write_row
    for r in rows[-4:]:
        write_row(tmp_path, r["name"], seconds=[1.0], blocks=388,
                  metrics=dict(image_reward=80 + r["feedback"]["iteration"] / 1000))
    import yaml
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(dict(rows=rows, out_dir=str(tmp_path), world="paper")))
    assert main(["summarize", "--config", str(tmp_path / "wf.yaml")]) == 0
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
    for stem in ("pareto_block_forwards", "fig7_training_iterations", "fig8_quality_vs_time",
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
