"""FLUX with ILF and the cache under `torch.compile`: no graph break, no per-step recompilation, eager's outputs."""
import pytest
import torch
from tiny_flux import run_flux, tiny_flux_pipeline
from tolerances import reduction_tol, tiny_block_reductions
from torch._dynamo.utils import counters

import ilf
from ilf import CacheConfig, FeedbackConfig, apply_cache, apply_feedback

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]

N = 5  # 2 double-stream + 3 single-stream blocks
STEPS = 6
ILF = FeedbackConfig(loop_start=1, loop_end=3, feedback_steps="outer:2", t_post="rescale")  # crosses the boundary
CACHE = CacheConfig("inner", 3, 2)
ATTACH = {  # method -> (config, most graphs: feedback on/off, cache recompute/reuse)
    "baseline": (None, 1),
    "ilf": (ILF, 2),
    "cache": (CACHE, 2),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _attach(pipe, config):
    if isinstance(config, FeedbackConfig):
        model = apply_feedback(pipe, config)
        with torch.no_grad():
            model.ilf_scales.copy_(torch.linspace(-0.3, 0.4, 6).reshape(3, 2))  # F's output reaches the result
    elif config is not None:
        apply_cache(pipe, config)


@pytest.mark.parametrize("method", list(ATTACH))
def test_compiled_flux_pipeline_no_graph_break_no_per_step_recompile(method):
    """`pipe.transformer = torch.compile(pipe.transformer)` (dynamo's "eager" backend: its tracing and graphs, no
    code generation) in a 6-step FluxPipeline run with guidance embedding, twice."""
    pipe = tiny_flux_pipeline()
    config, max_graphs = ATTACH[method]
    _attach(pipe, config)
    eager = run_flux(pipe, STEPS)
    counters.clear()
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    compiled = run_flux(pipe, STEPS)  # (not counted: a counter's hooks traced into the graph guard on its count)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= max_graphs  # one graph per feedback on/off or recompute/reuse, not one per step
    again = run_flux(pipe, STEPS)  # a second run: no new graph
    assert counters["stats"]["unique_graphs"] == graphs and sum(counters["graph_break"].values()) == 0
    # width 16, 16 image + 6 text tokens joined in attention; 5 blocks, ILF's loop of 3 re-run and F; every step
    tol = reduction_tol(tiny_block_reductions(16, 16 + 6, N + 3 + 1, steps=STEPS))
    scale = float(eager.abs().max())
    torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(again, eager, rtol=tol, atol=tol * scale)
    assert eager.std() > 0.1 * scale  # spread values, not a constant
    if config is not None:
        ilf.remove(pipe)  # through the compile wrapper
        assert ilf.get_attachment(pipe) is None


@pytest.mark.parametrize("order", ["compile, attach", "attach, compile"])
def test_blocks_compiled_fullgraph_with_feedback_equal_eager(order):
    """Regional compile of both block lists with `fullgraph=True` (a graph break raises): ILF's loop across the
    double/single boundary, F eager (looked through the wrapper when copied), eager's outputs, and a second run
    compiles nothing new."""
    from ilf import model_blocks

    eager = tiny_flux_pipeline()
    _attach(eager, ILF)
    reference = run_flux(eager, STEPS)
    pipe = tiny_flux_pipeline()

    def compile_blocks():
        for name in ("transformer_blocks", "single_transformer_blocks"):
            blocks = getattr(pipe.transformer, name)
            for i, block in enumerate(blocks):
                blocks[i] = torch.compile(block, backend="eager", fullgraph=True)

    if order == "compile, attach":
        compile_blocks()
    _attach(pipe, ILF)
    if order == "attach, compile":
        compile_blocks()
    counters.clear()
    out = run_flux(pipe, STEPS)
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= N  # at most one graph per compiled block, whatever the step, t or t_post
    again = run_flux(pipe, STEPS)
    assert counters["stats"]["unique_graphs"] == graphs
    tol = reduction_tol(tiny_block_reductions(16, 16 + 6, N + 3 + 1, steps=STEPS))
    scale = float(reference.abs().max())
    torch.testing.assert_close(out, reference, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(again, reference, rtol=tol, atol=tol * scale)
    assert type(pipe.transformer.ilf_feedback) is type(model_blocks(eager.transformer)[3])  # F: an eager block
