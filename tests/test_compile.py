"""ILF and the cache under torch.compile: dynamo traces the attached forward, block loop included, in one graph."""
import pytest
import torch

from ilf import CacheConfig, FeedbackConfig, apply_cache, apply_feedback
from tiny import prompt_embeds, tiny_dit, tiny_pixart


def _inputs(kind):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500])
    if kind == "dit":
        return x, dict(timestep=t, class_labels=torch.tensor([1, 1000]))
    pe = prompt_embeds(2)
    return x, dict(timestep=t, encoder_hidden_states=pe["prompt_embeds"], encoder_attention_mask=pe["prompt_attention_mask"])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind", ["pixart", "dit"])
@pytest.mark.parametrize("method", ["ilf", "cache"])
def test_attached_forward_has_no_graph_break(kind, method):
    model = (tiny_pixart if kind == "pixart" else tiny_dit)(num_layers=4)
    x, kw = _inputs(kind)
    if method == "ilf":
        apply_feedback(model, FeedbackConfig(1, 2))
        model.ilf_scales.data.fill_(0.3)
    else:
        apply_cache(model, CacheConfig("inner", 2, 2))
    calls = 2 if method == "cache" else 1  # the cache: a computing step, then a reusing step
    for _ in range(calls):
        with torch.no_grad():
            expected = model(x, **kw).sample
        if method == "cache":
            model.__dict__["_ilf_attachment"].method.calls -= 1  # explain re-runs the same step
        with torch.no_grad():
            explanation = torch._dynamo.explain(model)(x, **kw)
        assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
        assert explanation.graph_count == 1  # prepare, every block call, feedback / cache and head in one graph
        ops = sum(len(g.graph.nodes) for g in explanation.graphs)
        assert ops > 4 * 5  # the graph really holds the block loop
    with torch.no_grad():  # and the compiled forward computes the same thing
        compiled = torch.compile(model, backend="eager")
        if method == "cache":
            model.__dict__["_ilf_attachment"].method.calls -= 1
        torch.testing.assert_close(compiled(x, **kw).sample, expected)


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
