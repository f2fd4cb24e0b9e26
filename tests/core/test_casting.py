"""ILF on a backbone stored in float8 by diffusers' layerwise casting (`enable_layerwise_casting`), in either order.

The casting hooks upcast each layer's float8 weights to the compute dtype for its forward. F is a trainable
copy of block e kept in the compute dtype, so the run must equal, operation for operation, an uncast backbone
holding the upcast float8 weights (with F copied from block e's weights as they were when ILF was attached).
"""
import copy

import pytest
import torch

import ilf
from diffusers.hooks import apply_layerwise_casting
from ilf import FeedbackConfig, apply_feedback
from pipeline_checks import upcast_copy
from tiny import prompt_embeds, run_pipeline, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FLOAT8 = torch.float8_e4m3fn
SKIP_ALL_BUT_EMBEDDING = ("pos_embed",)  # every other layer stored in float8 (DiT: block e's first weight too)


def _enable_casting(model, compute: torch.dtype, skip) -> None:
    if skip is None:  # the model's own way, with diffusers' default and the model's skip patterns (norms stay)
        model.enable_layerwise_casting(storage_dtype=FLOAT8, compute_dtype=compute)
    else:
        apply_layerwise_casting(model, storage_dtype=FLOAT8, compute_dtype=compute, skip_modules_pattern=skip)


def _attach(pipe):
    model = apply_feedback(pipe, FeedbackConfig(1, 2, "all", t_post="rescale"))
    with torch.no_grad():
        model.ilf_scales.copy_(torch.tensor([0.3, -0.2]))  # nonzero: F's output reaches the result
    return model


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("kind,compute,skip", [
    ("pixart-alpha", torch.float32, None),  # diffusers' default skip patterns (norms, embeddings stay)
    ("pixart-alpha", torch.bfloat16, SKIP_ALL_BUT_EMBEDDING),
    ("dit", torch.float32, SKIP_ALL_BUT_EMBEDDING),
])
def test_float8_storage_runs_feedback_as_block_e(kind, compute, skip, order):
    pipe = tiny_pipeline(kind, num_layers=4).to(compute)
    uncast = copy.deepcopy(pipe)  # block e's weights before casting (F's source in the "after" order)
    if order == "before":
        _enable_casting(pipe.transformer, compute, skip)
        ref = upcast_copy(uncast, pipe.transformer, compute)
        model, ref_model = _attach(pipe), _attach(ref)
    else:
        model = _attach(pipe)
        _enable_casting(pipe.transformer, compute, skip)
        ref = upcast_copy(uncast, pipe.transformer, compute)
        ref_model = _attach(ref)
        ref_model.ilf_feedback.load_state_dict(_attach(uncast).ilf_feedback.state_dict())  # F from uncast e
    assert any(p.dtype == FLOAT8 for p in model.transformer_blocks[2].parameters())
    out = torch.as_tensor(run_pipeline(pipe, 2)).float()
    expected = torch.as_tensor(run_pipeline(ref, 2)).float()
    assert torch.isfinite(out).all()
    # the same operations on the same values in the same dtype: equal up to a few rounding steps of the
    # compute dtype at the output's magnitude (not a measured margin: ideally bit-identical)
    eps = torch.finfo(compute).eps
    torch.testing.assert_close(out, expected, rtol=4 * eps, atol=4 * eps * float(expected.abs().max()))
    params = ilf.feedback_parameters(pipe)
    assert {p.dtype for p in params[:-1]} == {compute} and params[-1].dtype == torch.float32  # trainable dtypes
    assert all(p.requires_grad for p in params)


def test_float8_storage_trains_feedback():
    """A training step through a float8-stored backbone: every parameter of F and the scales gets a gradient."""
    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    _enable_casting(pipe.transformer, torch.float32, SKIP_ALL_BUT_EMBEDDING)
    model = _attach(pipe)
    params = ilf.feedback_parameters(pipe)
    pe = prompt_embeds(2)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = model(x, encoder_hidden_states=pe["prompt_embeds"], encoder_attention_mask=pe["prompt_attention_mask"],
                timestep=torch.tensor([999, 500])).sample
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert all(p.grad.abs().sum() > 0 for p in params)
    assert not any(p.requires_grad for p in model.parameters())  # the float8 backbone stays frozen
