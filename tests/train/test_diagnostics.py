"""Training diagnostics: written before the first step, at every logged step and checkpoint, kept exact on
resume, and drawn by `ilf figures`."""
from __future__ import annotations

import json
import shutil

import pytest
from train_utils import LOOP, tiny_config, tiny_train_pipeline  # noqa: E402

from ilf.cli import main  # noqa: E402
from ilf.train import precompute, train  # noqa: E402
from ilf.train.diagnostics import DIAGNOSTICS_NAME  # noqa: E402


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents") / "c2i"
    precompute(tiny_config("c2i", root), root, pipeline=tiny_train_pipeline("c2i"), progress=False)
    return root


def _records(run) -> list[dict]:
    return [json.loads(x) for x in (run / DIAGNOSTICS_NAME).read_text().splitlines()]


def test_records_at_start_log_steps_and_checkpoints(latents, tmp_path, one_thread):
    cfg = tiny_config("c2i", latents, iterations=5, log_interval=2, checkpoint_interval=3)
    train(cfg, tmp_path / "run", pipeline=tiny_train_pipeline("c2i"), progress=False)
    recs = _records(tmp_path / "run")
    assert [r["iteration"] for r in recs] == [0, 1, 2, 3, 4, 5]  # start, first, every 2nd, checkpoint 3, last
    m = LOOP[1] - LOOP[0] + 1
    for r in recs:
        assert len(r["scales"]) == len(r["feedback_ratio"]) == len(r["feedback_norm"]) == m
        assert {"loss", "loss_recon", "loss_distill", "output_change"} <= set(r)
        # loss = recon + distill per sample, so their probe means add up (float32 sums of 8 values)
        assert r["loss"] == pytest.approx(r["loss_recon"] + r["loss_distill"], rel=1e-5)
        # ratio = |s_i| * ||f||/||h_i|| by definition
        assert r["feedback_ratio"] == pytest.approx([abs(s) * n for s, n in zip(r["scales"], r["feedback_norm"])])
    assert recs[0]["scales"] == [0.0] * m and recs[0]["output_change"] == 0.0  # s = 0: the plain backbone
    assert recs[-1]["output_change"] > 0 and all(n > 0 for n in recs[-1]["feedback_norm"])
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert recs[-1]["scales"] == [r for r in log if "loss" in r][-1]["scales"]


def test_reconstruction_only_records_its_one_term(latents, tmp_path, one_thread):
    train(tiny_config("c2i", latents, iterations=1, distill="none"), tmp_path / "run",
          pipeline=tiny_train_pipeline("c2i"), progress=False)
    r = _records(tmp_path / "run")[-1]
    assert "loss_distill" not in r and r["loss"] == r["loss_recon"]


def test_resume_truncates_and_matches_a_straight_run(latents, tmp_path, one_thread):
    cfg = tiny_config("c2i", latents, iterations=4, checkpoint_interval=2)
    train(cfg, tmp_path / "straight", pipeline=tiny_train_pipeline("c2i"), progress=False)

    def kill(it: int) -> None:
        if it == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", pipeline=tiny_train_pipeline("c2i"), progress=False, on_step=kill)
    train(cfg, tmp_path / "killed", resume=True, pipeline=tiny_train_pipeline("c2i"), progress=False)
    assert _records(tmp_path / "killed") == _records(tmp_path / "straight")  # measuring leaves training exact


def test_figures_draw_each_run(latents, tmp_path, one_thread, capsys):
    from report_fixtures import write_paper_like_results
    from ilf.report.summarize import summarize_rows

    rows = write_paper_like_results(tmp_path)
    summarize_rows(rows, tmp_path, "paper")
    train(tiny_config("c2i", latents, iterations=2), tmp_path / "runs" / "tiny", pipeline=tiny_train_pipeline("c2i"),
          progress=False)
    assert main(["figures", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "fig")]) == 0
    for ext in ("png", "pdf"):  # found under <summary folder>/runs/ without naming it
        assert (tmp_path / "fig" / f"training_tiny.{ext}").stat().st_size > 1000
    shutil.rmtree(tmp_path / "fig")
    (tmp_path / "empty").mkdir()
    code = main(["figures", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "fig"),
                 "--runs", str(tmp_path / "empty")])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "fig").exists()
