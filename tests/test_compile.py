"""ILF and the cache under torch.compile: the host logic stays out of the graph, so no break and no per-step recompile."""
import pytest
import torch

from torch._dynamo.utils import counters

from ilf import CacheConfig, FeedbackConfig, apply_cache, apply_feedback, get_attachment, remove
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
    """Issue 11: `pipe.transformer = torch.compile(pipe.transformer)` in a 20-step stock pipeline."""
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
    from test_bench import tiny_builder

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
    from test_bench import tiny_builder

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
