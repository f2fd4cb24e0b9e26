"""ILF on FLUX stored in float8 by diffusers' layerwise casting (`enable_layerwise_casting`), in either order.

As for PixArt (tests/core/test_casting.py): F is a trainable copy of block e in the hooks' compute dtype, so a run
equals, operation for operation, an uncast FLUX holding the upcast float8 weights (with F copied from block e as it
was when ILF was attached), and a training step gives every parameter of F and the scales a gradient.
"""
import copy

import pytest
import torch
from pipeline_checks import upcast_copy
from tiny_flux import flux_inputs, flux_prompt_embeds, tiny_flux_pipeline

import ilf
from ilf import FeedbackConfig, apply_feedback, count_block_forwards, expected_block_forwards

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]

FLOAT8 = torch.float8_e4m3fn
N = 5
LOOP = FeedbackConfig(loop_start=1, loop_end=3, feedback_steps="all", t_post="rescale")  # crosses the boundary
STEPS = 2


def _run(pipe, dtype: torch.dtype) -> torch.Tensor:
    emb = {k: v.to(dtype) for k, v in flux_prompt_embeds().items()}
    return torch.as_tensor(pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), height=16,
                                width=16, output_type="latent", **emb).images).float()


def _attach(pipe):
    model = apply_feedback(pipe, LOOP)
    with torch.no_grad():
        model.ilf_scales.copy_(torch.tensor([[0.3, -0.2], [0.2, 0.1], [-0.3, 0.2]]))  # F's output reaches the result
    return model


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16, torch.float16])
def test_float8_storage_runs_feedback_as_block_e(compute, order):
    """The model's own `enable_layerwise_casting` (FLUX keeps `pos_embed` and the norms uncast)."""
    pipe = tiny_flux_pipeline().to(dtype=compute)
    uncast = copy.deepcopy(pipe)
    if order == "after":
        model = _attach(pipe)
    pipe.transformer.enable_layerwise_casting(storage_dtype=FLOAT8, compute_dtype=compute)
    ref = upcast_copy(uncast, pipe.transformer, compute)
    if order == "before":
        model = _attach(pipe)
    ref_model = _attach(ref)
    if order == "after":  # F was copied from block e before it was stored in float8
        ref_model.ilf_feedback.load_state_dict(_attach(uncast).ilf_feedback.state_dict())
    e = ilf.model_blocks(model)[LOOP.loop_end]
    assert e.attn.to_q.weight.dtype == FLOAT8 and type(e).__name__ == "FluxSingleTransformerBlock"
    with count_block_forwards(pipe) as counter:
        out = _run(pipe, compute)
    expected = _run(ref, compute)
    assert counter.count == expected_block_forwards(LOOP, N, STEPS)
    assert torch.isfinite(out).all() and expected.std() > 0.1 * expected.abs().max()
    # the same operations on the same values in the same dtype: equal up to a few rounding steps of the compute
    # dtype at the output's magnitude (ideally bit-identical)
    eps = torch.finfo(compute).eps
    torch.testing.assert_close(out, expected, rtol=4 * eps, atol=4 * eps * float(expected.abs().max()))
    params = ilf.feedback_parameters(pipe)
    assert {p.dtype for p in params[:-1]} == {compute} and params[-1].dtype == torch.float32
    assert all(p.requires_grad for p in params)
    ilf.remove(pipe)
    assert e.attn.to_q.weight.dtype == FLOAT8  # the casting hooks stay


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_float8_storage_trains_feedback(compute):
    """A training step through a float8-stored FLUX (guidance embedding on): every parameter of F and the scales
    gets a finite, nonzero gradient; the backbone stays frozen."""
    pipe = tiny_flux_pipeline().to(dtype=compute)
    pipe.transformer.enable_layerwise_casting(storage_dtype=FLOAT8, compute_dtype=compute)
    model = _attach(pipe)
    params = ilf.feedback_parameters(pipe)
    inputs = flux_inputs(model, dtype=compute)
    out = model(**inputs)[0]
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert all(p.grad.abs().sum() > 0 for p in params)
    assert not any(p.requires_grad for p in model.parameters())
    torch.optim.SGD(params, lr=1e-2).step()  # F's weights move in the compute dtype
    assert {p.dtype for p in params[:-1]} == {compute}
