"""Attaching a method changes nothing a caller can observe, and every method runs in half precision.

A float32 `ilf_scales` registered on the DiT transformer would make `transformer.dtype` float32, so DiTPipeline
in float16 would build float32 latents and crash: F and the scales are owned by the method, not registered.
"""
import pytest
import torch

import ilf
from diffusers import DiTPipeline
from ilf import FeedbackConfig, load_feedback, remove, save_feedback
from methods import METHODS
from tiny import run_pipeline, tiny_dit, tiny_pipeline
from tolerances import storage_tol

KINDS = ["pixart-alpha", "pixart-sigma", "dit"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# max |out - out_fp32| / max(1, max |out_fp32|) after 3 steps of a 4-block model: the storage rounding of about
# eight intermediates per block and step, and the head's (tests/tolerances.py); float32 against itself is exact.
ROUNDINGS = 3 * 4 * 8 + 8
TOLERANCE = {torch.float32: 0.0, torch.bfloat16: storage_tol(ROUNDINGS, torch.bfloat16),
             torch.float16: storage_tol(ROUNDINGS, torch.float16)}


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # tests/conftest.py


def _observe(model, directory):
    model.save_pretrained(directory)
    return dict(dtype=model.dtype, device=model.device, config=dict(model.config),
                state=[(k, v.dtype, v.clone()) for k, v in model.state_dict().items()],
                params=[(n, p.dtype, p.device) for n, p in model.named_parameters()],
                files={p.name: p.read_bytes() for p in sorted(directory.iterdir())})


def _assert_same(a, b):
    assert (a["dtype"], a["device"], a["config"], a["params"], a["files"]) == (b["dtype"], b["device"], b["config"],
                                                                                b["params"], b["files"])
    assert [k for k, _, _ in a["state"]] == [k for k, _, _ in b["state"]]
    assert all(da == db and torch.equal(va, vb) for (_, da, va), (_, db, vb) in zip(a["state"], b["state"]))


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "baseline"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attach_changes_no_observable(kind, method, dtype, tmp_path):
    pipe = tiny_pipeline(kind, num_layers=4).to(DTYPES[dtype])
    model = pipe.transformer
    before = _observe(model, tmp_path / "before")
    METHODS[method](pipe)
    run_pipeline(pipe, 2)
    _assert_same(_observe(model, tmp_path / "attached"), before)
    remove(pipe)
    _assert_same(_observe(model, tmp_path / "removed"), before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_half_precision_matches_float32(kind, method):
    outs = {}
    for name, dtype in DTYPES.items():
        pipe = tiny_pipeline(kind, num_layers=4).to(dtype)  # cast first, then attach
        METHODS[method](pipe)
        out = torch.as_tensor(run_pipeline(pipe, 3)).float()
        assert torch.isfinite(out).all(), (name, method)
        outs[dtype] = out
    ref = outs[torch.float32]
    scale = max(1.0, float(ref.abs().max()))
    for dtype, out in outs.items():
        err = float((out - ref).abs().max()) / scale
        assert err <= TOLERANCE[dtype], (kind, method, dtype, err)


def test_dit_float16_feedback_keeps_the_transformer_dtype_and_runs():
    pipe = tiny_pipeline("dit", num_layers=6).to(torch.float16)
    ilf.apply_feedback(pipe, FeedbackConfig(loop_start=1, loop_end=3))
    assert pipe.transformer.dtype == torch.float16
    assert pipe.transformer.ilf_scales.dtype == torch.float32  # scales stay float32 (METHOD.md)
    out = torch.as_tensor(run_pipeline(pipe, 4))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_feedback_follows_backbone_cast_after_attach(dtype):
    pipe = tiny_pipeline("dit", num_layers=4)
    METHODS["ilf"](pipe)
    params = ilf.feedback_parameters(pipe)
    pipe.to(dtype)  # F is not registered, so it follows on the next call
    out = torch.as_tensor(run_pipeline(pipe, 2))
    assert torch.isfinite(out).all()
    assert all(p.dtype == dtype for p in params[:-1]) and params[-1].dtype == torch.float32
    assert ilf.feedback_parameters(pipe)[0] is params[0]  # the same Parameter objects (an optimizer keeps them)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_in_float32(dtype, tmp_path):
    src = tiny_dit(num_layers=4).to(dtype)
    ilf.apply_feedback(src, FeedbackConfig(1, 2))
    with torch.no_grad():
        src.ilf_scales.copy_(torch.tensor([0.123456789, -0.987654321]))
        for p in src.ilf_feedback.parameters():
            p.add_(0.01)
    save_feedback(src, tmp_path / "ckpt")
    dst = tiny_dit(num_layers=4)
    load_feedback(dst, tmp_path / "ckpt")
    assert dst.dtype == torch.float32 and dst.ilf_scales.dtype == torch.float32
    assert torch.equal(dst.ilf_scales, src.ilf_scales)  # identical float32 scales
    for a, b in zip(dst.ilf_feedback.state_dict().values(), src.ilf_feedback.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b.float())


def _training_step(pipe) -> list[torch.nn.Parameter]:
    """One backward step of a direct call (as `ilf train` does); returns the trainable parameters."""
    from tiny import prompt_embeds

    model = pipe.transformer
    params = ilf.feedback_parameters(pipe)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(model.dtype)
    if isinstance(pipe, DiTPipeline):
        kwargs = dict(class_labels=torch.tensor([1, 3]))
    else:
        pe = prompt_embeds(2)
        kwargs = dict(encoder_hidden_states=pe["prompt_embeds"].to(model.dtype),
                      encoder_attention_mask=pe["prompt_attention_mask"])
    out = model(x, timestep=torch.tensor([999, 500]), **kwargs).sample
    out.float().square().mean().backward()
    return params


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
def test_preview_in_inference_mode_then_training(kind):
    """Attach, cast the pipeline, preview under `torch.inference_mode()`, then train: F follows the cast during
    the preview, and its parameters and the scales stay normal tensors (the same objects an optimizer holds)."""
    pipe = tiny_pipeline(kind, num_layers=4)
    METHODS["ilf"](pipe)
    params = ilf.feedback_parameters(pipe)
    pipe.to(torch.bfloat16)
    with torch.inference_mode():
        run_pipeline(pipe, 2)
    assert not any(p.is_inference() for p in params)
    assert {p.dtype for p in params[:-1]} == {torch.bfloat16} and params[-1].dtype == torch.float32
    trained = _training_step(pipe)
    assert all(a is b for a, b in zip(trained, params))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_attach_and_load_inside_inference_mode_then_training(tmp_path):
    """`apply_feedback` / `load_feedback` called under `torch.inference_mode()` still give trainable tensors."""
    src = tiny_pipeline("pixart-alpha", num_layers=4)
    with torch.inference_mode():
        METHODS["ilf"](src)
    assert not any(p.is_inference() for p in ilf.feedback_parameters(src))
    save_feedback(src, tmp_path / "ckpt")
    dst = tiny_pipeline("pixart-alpha", num_layers=4)
    with torch.inference_mode():
        load_feedback(dst, tmp_path / "ckpt")
    for pipe in (src, dst):
        params = _training_step(pipe)
        assert not any(p.is_inference() for p in params)
        assert all(p.grad is not None for p in params)
