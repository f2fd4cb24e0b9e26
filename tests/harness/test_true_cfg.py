"""True classifier-free guidance in `ilf generate` (FluxPipeline, QwenImagePipeline): a Qwen-Image row runs its
`guidance_scale` as `true_cfg_scale` with the model card's negative prompt " ", a cond and an uncond transformer
call per step, and its generation job's measured block forwards equal the analytic count x 2; FLUX.1-dev keeps its
distilled `guidance_scale` and runs true CFG only with a row's `true_cfg_scale`."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from tiny_qwenimage import TEXT_DIM, TEXT_TOKENS, qwen_pipeline

from ilf.accounting import calls_per_step, expected_block_forwards
from ilf.errors import ILFConfigError
from ilf.harness.generate import ImageJob, generate_row, method_fields, pipeline_kwargs
from ilf.harness.workflow_config import get_row, resolve, row_calls_per_step
from ilf.io import read_jsonl
from ilf.registry import BACKBONES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LAYERS, SIDE, STEPS = 3, 32, 2


@pytest.fixture
def tiny_registered_qwen(monkeypatch):
    """The registered Qwen-Image entry at the tiny pipeline's depth (the config check holds N to the registry),
    and two prompts in place of DrawBench's (a downloaded asset)."""
    import ilf.harness.generate
    from ilf.harness.prompts import PromptItem

    spec = BACKBONES["qwen-image"]
    monkeypatch.setitem(BACKBONES, "qwen-image", dataclasses.replace(
        spec, transformer_config={**spec.transformer_config, "num_layers": LAYERS}))
    monkeypatch.setattr(ilf.harness.generate, "load_prompt_set", lambda name, n=None: [
        PromptItem("0", "a red cube on a table"), PromptItem("1", "two cats")][:n])


def config(tmp_path: Path, backbone: str, blocks: int, resolution: int, **row) -> dict:
    base = {"name": "r", "table": "t", "backbone": backbone, "prompts": "drawbench", "num_prompts": 2,
            "batch_size": 2, "steps": STEPS, "method": "baseline", "metrics": [], **row}
    return resolve({"name": "t", "world": "paper", "out_dir": str(tmp_path / "out"), "seed": 3,
                    "backbones": {backbone: {"task": "t2i", "num_blocks": blocks, "resolution": resolution}},
                    "rows": [base]})


def text_encoder_stand_in(pipe, seen: list[list[str]]):
    """QwenImagePipeline's prompt encoding without Qwen2.5-VL: one fixed embedding per text (seeded by its hash);
    records each call's texts."""
    def encode(prompt, device):
        seen.append(list(prompt))
        embs = [torch.randn(TEXT_TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(
            int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))) for p in prompt]
        return torch.stack(embs).to(device), torch.ones(len(prompt), TEXT_TOKENS, dtype=torch.long, device=device)
    pipe._get_qwen_prompt_embeds = encode
    return pipe


@pytest.mark.parametrize("guidance_scale,calls", [(4.0, 2), (1.0, 1)])
def test_qwen_image_row_runs_true_cfg_and_its_measured_count_is_the_analytic_one(
        tmp_path, tiny_registered_qwen, guidance_scale, calls):
    row = get_row(config(tmp_path, "qwen-image", LAYERS, SIDE, guidance_scale=guidance_scale), "r")
    assert row["true_cfg_scale"] == guidance_scale and row_calls_per_step(row) == calls
    assert row["block_forwards_analytic"] == calls * expected_block_forwards(None, LAYERS, STEPS)
    seen: list[list[str]] = []
    generate_row(row, device="cpu", warmup=0, progress=False,
                 pipeline_factory=lambda r, d: text_encoder_stand_in(qwen_pipeline(LAYERS), seen))
    recs = read_jsonl(next(Path(row["generation_dir"], "shards").glob("*.jsonl")))
    assert [r["block_forwards_measured"] for r in recs] == [calls * LAYERS * STEPS] * 2
    assert all(r["block_forwards_analytic"] == row["block_forwards_analytic"] for r in recs)
    # the record says which guidance ran: the scale and the uncond call's prompt (none at a scale <= 1)
    assert {(r["true_cfg_scale"], r["negative_prompt"]) for r in recs} == {(guidance_scale, " " if calls == 2 else None)}
    prompts = [r["prompt"] for r in recs]
    # the prompts, then (true CFG) the model card's negative " " once per prompt
    assert seen == [prompts, [" ", " "]] if calls == 2 else seen == [prompts]


def test_qwen_image_taylorseer_row_measures_its_analytic_count(tmp_path, tiny_registered_qwen):
    """diffusers' TaylorSeer on QwenImagePipeline: its blocks run on the compute steps only (0, 2, 4 of 6), in each
    of the two calls per step; the generation job stops on a static row whose measured count is not the analytic."""
    settings = {"cache_interval": 2, "disable_cache_before_step": 1}
    row = get_row(config(tmp_path, "qwen-image", LAYERS, SIDE, guidance_scale=4.0, steps=6, method="taylorseer",
                         taylorseer=settings), "r")
    assert row["block_forwards_analytic"] == 2 * LAYERS * 3
    generate_row(row, device="cpu", warmup=0, progress=False,
                 pipeline_factory=lambda r, d: text_encoder_stand_in(qwen_pipeline(LAYERS), []))
    recs = read_jsonl(next(Path(row["generation_dir"], "shards").glob("*.jsonl")))
    assert [r["block_forwards_measured"] for r in recs] == [2 * LAYERS * 3] * 2


def _jobs(n: int) -> list[ImageJob]:
    return [ImageJob(i, "drawbench", str(i), f"prompt {i}", None, 0, i) for i in range(n)]


@pytest.mark.parametrize("true_cfg,calls", [(None, 1), (2.0, 2)])
def test_flux1_dev_keeps_its_distilled_guidance_and_takes_true_cfg_when_asked(tmp_path, true_cfg, calls):
    extra = {} if true_cfg is None else {"true_cfg_scale": true_cfg}
    row = get_row(config(tmp_path, "flux1-dev", 57, 1024, guidance_scale=3.5, **extra), "r")
    kw = pipeline_kwargs(row, _jobs(3))
    assert kw["guidance_scale"] == 3.5 and row_calls_per_step(row) == calls
    assert calls_per_step("FluxPipeline", **kw) == calls
    assert row["block_forwards_analytic"] == calls * expected_block_forwards(None, 57, STEPS)
    fields = method_fields(row, None)
    if true_cfg is None:
        assert "true_cfg_scale" not in row and "negative_prompt" not in kw
        assert fields["true_cfg_scale"] is None and fields["negative_prompt"] is None
    else:
        assert kw["true_cfg_scale"] == true_cfg and kw["negative_prompt"] == [" "] * 3
        assert (fields["true_cfg_scale"], fields["negative_prompt"]) == (true_cfg, " ")


def test_qwen_image_pipeline_kwargs_on_the_real_class():
    row = {"backbone": "qwen-image", "task": "t2i", "steps": 50, "guidance_scale": 4.0, "true_cfg_scale": 4.0,
           "resolution": 1328}
    kw = pipeline_kwargs(row, _jobs(2))
    assert kw["true_cfg_scale"] == 4.0 and kw["negative_prompt"] == [" ", " "] and kw["guidance_scale"] is None
    assert calls_per_step("QwenImagePipeline", **kw) == 2


def test_true_cfg_scale_on_a_pipeline_without_it_is_refused(tmp_path):
    with pytest.raises(ILFConfigError) as err:
        config(tmp_path, "sd35-large", 38, 1024, true_cfg_scale=4.0)
    assert err.value.field == "rows[r].true_cfg_scale" and "QwenImagePipeline" in str(err.value)
