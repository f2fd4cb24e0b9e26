"""ILF and the cache under torch.compile: the host logic stays out of the graph, so no break and no per-step recompile."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from ilf import CacheConfig, FeedbackConfig, apply_cache, apply_feedback, get_attachment, remove
from ilf.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from tiny import run_pipeline, tiny_pipeline
from tolerances import tiny_pipeline_tol

BENCH_TOL = tiny_pipeline_tol(28 + 12 + 1, 20)  # `ilf bench` rows on the tiny 28-block stand-in, up to 20 steps


@pytest.fixture(autouse=True)
def _fresh_dynamo(one_thread):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


ATTACH = {  # method -> (attach, most graphs: feedback on/off, cache recompute/reuse)
    "baseline": (lambda pipe: None, 1),
    "ilf": (lambda pipe: apply_feedback(pipe, FeedbackConfig(1, 2, "outer:4", t_post="rescale")), 2),
    "cache": (lambda pipe: apply_cache(pipe, CacheConfig("inner", 2, 3)), 2),
}


@pytest.mark.numerics
@pytest.mark.parametrize("method", list(ATTACH))
def test_compiled_stock_pipeline_no_graph_break_no_per_step_recompile(method):
    """`pipe.transformer = torch.compile(pipe.transformer)` in a 20-step stock pipeline."""
    pipe = tiny_pipeline("pixart-alpha", num_layers=3)
    attach, max_graphs = ATTACH[method]
    attach(pipe)
    if method == "ilf":
        pipe.transformer.ilf_scales.data.fill_(0.3)
    eager = torch.as_tensor(run_pipeline(pipe, 20))
    counters.clear()
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    compiled = torch.as_tensor(run_pipeline(pipe, 20))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= max_graphs  # one graph per feedback on/off or recompute/reuse, not one per step
    again = torch.as_tensor(run_pipeline(pipe, 20))  # a second run: no new graph
    assert counters["stats"]["unique_graphs"] == graphs and sum(counters["graph_break"].values()) == 0
    tol = tiny_pipeline_tol(3 + 2 + 1, 20)  # 3 blocks, ILF's loop of 2 re-run and F, 20 steps
    torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol)
    torch.testing.assert_close(again, eager, rtol=tol, atol=tol)
    if method != "baseline":
        remove(pipe)  # works through the compile wrapper
        assert get_attachment(pipe) is None


def test_bench_compile_mode_times_compiled_rows():
    from ilf.bench.run import BenchSettings, run_bench
    from bench_models import tiny_builder

    settings = BenchSettings(backbone="pixart-alpha-512", dtype="fp32", resolution=16, repeats=1, rows="ilf-t1",
                             compile=True, compile_backend="eager", text_tokens=4, guidance_scale=1.0)
    records = run_bench(settings, build=tiny_builder, progress=False)
    assert [(r["row"], r["compiled"]) for r in records] == [("baseline-20", False), ("ilf-t1", False),
                                                             ("baseline-20", True), ("ilf-t1", True)]
    compiled = [r for r in records if r["compiled"]]
    assert all(r["block_forwards_measured"] == r["block_forwards_analytic"] for r in compiled)
    assert all(r["peak_memory_mib"] is None for r in compiled)


def test_bench_whole_model_compile_mode():
    """`--compile whole` compiles the transformer's call: rows match eager, count right, never recompile when timed."""
    from ilf.bench.run import BenchSettings, run_bench
    from bench_models import tiny_builder

    settings = BenchSettings(backbone="pixart-alpha-512", dtype="fp32", resolution=16, repeats=2, rows="ilf-t1",
                             compile="whole", compile_backend="eager", text_tokens=4, guidance_scale=1.0)
    try:
        records = run_bench(settings, build=tiny_builder, progress=False)
    finally:
        torch._dynamo.reset()
    assert [(r["row"], r["compile"]) for r in records] == [("baseline-20", "whole"), ("ilf-t1", "whole")]
    for r in records:
        assert r["error"] == "" and r["compiled"] and r["rel_diff_vs_eager"] < BENCH_TOL
        assert r["recompiles_timed"] == 0 and r["graphs_compiled"] >= 1
        assert r["block_forwards_measured"] == r["block_forwards_analytic"]


def _compile_blocks(pipe) -> None:
    """Regional compile by replacement, as on models without `_repeated_blocks` (backend "eager": dynamo's
    tracing and graph, no code generation, so outputs must equal eager's)."""
    blocks = pipe.transformer.transformer_blocks
    for i, block in enumerate(blocks):
        blocks[i] = torch.compile(block, backend="eager")


@pytest.mark.parametrize("method,order", [("ilf", "compile, attach"), ("ilf", "attach, compile"),
                                          ("cache", "compile, attach")])
def test_blocks_compiled_by_replacement_equal_eager_and_count(method, order):
    from ilf import count_block_forwards, expected_block_forwards
    from methods import METHODS

    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    eager = copy.deepcopy(pipe)
    METHODS[method](eager)
    reference = torch.as_tensor(run_pipeline(eager, 3))
    if order == "compile, attach":
        _compile_blocks(pipe)
    model = METHODS[method](pipe)
    if order == "attach, compile":
        _compile_blocks(pipe)
    with count_block_forwards(pipe) as counter:
        out = torch.as_tensor(run_pipeline(pipe, 3))
    # dynamo's "eager" backend runs the traced aten ops in the traced order: equal to eager up to float32
    # rounding (bit-identical in practice); the tolerance is a few float32 eps at the output's magnitude
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(out, reference, rtol=8 * eps, atol=8 * eps * float(reference.abs().max()))
    assert counter.count == expected_block_forwards(get_attachment(model).config, 4, 3)
    if method == "ilf":
        assert type(model.ilf_feedback) is type(model.transformer_blocks[2]._orig_mod)  # F: the eager block


def test_checkpoints_between_compiled_blocks_and_eager(tmp_path):
    """Names are the eager block's: a compiled-blocks model saves loadable checkpoints and loads eager ones."""
    from ilf import load_feedback, save_feedback
    from methods import METHODS

    eager = tiny_pipeline("pixart-alpha", num_layers=4)
    compiled = copy.deepcopy(eager)
    _compile_blocks(compiled)
    METHODS["ilf"](eager)
    save_feedback(eager, tmp_path / "eager")
    load_feedback(compiled, tmp_path / "eager")  # was refused: "does not fit this backbone" (`_orig_mod.` names)
    eps = torch.finfo(torch.float32).eps
    reference = torch.as_tensor(run_pipeline(eager, 3))
    torch.testing.assert_close(torch.as_tensor(run_pipeline(compiled, 3)), reference, rtol=8 * eps,
                               atol=8 * eps * float(reference.abs().max()))
    save_feedback(compiled, tmp_path / "compiled")
    meta = json.loads((tmp_path / "compiled" / CONFIG_NAME).read_text())
    names = list(load_file(tmp_path / "compiled" / WEIGHTS_NAME)) + list(meta["block_shapes"])
    assert not any("_orig_mod" in n for n in names)
    fresh = tiny_pipeline("pixart-alpha", num_layers=4)
    load_feedback(fresh, tmp_path / "compiled")
    torch.testing.assert_close(torch.as_tensor(run_pipeline(fresh, 3)), reference, rtol=8 * eps,
                               atol=8 * eps * float(reference.abs().max()))
