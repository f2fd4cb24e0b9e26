"""FLUX.1 (`FluxTransformer2DModel`): the adapter's forward equals the stock forward; refused inputs are named."""
import pytest
import torch
from tiny_flux import TEXT_TOKENS, flux_inputs, tiny_flux

import ilf
from ilf import FeedbackConfig, UnsupportedModelError, apply_feedback
from ilf.adapters import adapter_for, model_blocks, named_blocks, plain_forward

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]  # floats across code paths; tiny models

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _plain(model, inputs):
    adapter = adapter_for(model)
    return plain_forward(adapter, model, adapter.prepare(model, **inputs))


def test_block_sequence_is_double_then_single_stream():
    model = tiny_flux(num_layers=2, num_single_layers=3)
    names = [name for name, _ in named_blocks(model)]
    assert names == ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0",
                     "single_transformer_blocks.1", "single_transformer_blocks.2"]
    assert len(model_blocks(model)) == 5
    assert adapter_for(model).streams == ("image", "text") and adapter_for(model).timestep_scale == 1 / 1000


CASES = [(dtype, guidance, {}) for dtype in DTYPES for guidance in (True, False)] + [
    (torch.float32, True, extra) for extra in ({"joint_attention_kwargs": {}}, {"joint_attention_kwargs": {"scale": 0.5}},
                                                {"ids3d": True}, {"return_dict": True})]


@pytest.mark.parametrize("dtype,guidance_embeds,extra", CASES,
                         ids=[f"{str(d)[6:]}-{'dev' if g else 'schnell'}-{'-'.join(e) or 'plain'}" for d, g, e in CASES])
def test_plain_forward_equals_stock_forward(dtype, guidance_embeds, extra):
    """Every input FluxPipeline passes (FLUX.1-dev: guidance; schnell: none), attention kwargs (a LoRA `scale` on a
    model without LoRA layers is dropped as the stock forward drops it), the deprecated 3-d ids, `return_dict`."""
    model = tiny_flux(guidance_embeds=guidance_embeds).to(dtype)
    inputs = flux_inputs(model, dtype=dtype)
    extra = dict(extra)
    if extra.pop("ids3d", False):  # the deprecated batched ids
        inputs["img_ids"] = inputs["img_ids"][None].expand(2, -1, -1)
        inputs["txt_ids"] = inputs["txt_ids"][None].expand(2, -1, -1)
    inputs.update(extra)
    with torch.no_grad():
        ref = model(**inputs)
        out = _plain(model, inputs)
    ref, out = (ref.sample, out.sample) if inputs["return_dict"] else (ref[0], out[0])
    assert out.dtype == dtype and out.shape == (2, 16, 64)
    assert ref.float().std() > 0.1  # a spread output, not a constant
    assert torch.equal(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attached_zero_scales_equal_stock_forward(dtype):
    model = tiny_flux().to(dtype)
    inputs = flux_inputs(model, dtype=dtype)
    with torch.no_grad():
        ref = model(**inputs)[0]
        apply_feedback(model, FeedbackConfig(1, 3))  # loop crosses double -> single; direct call: t_post = t
        out = model(**inputs)[0]  # g + 0 * f == g: the plain backbone's ops
        assert torch.equal(out, ref)
        model.ilf_scales.fill_(0.5)
        assert not torch.allclose(model(**inputs)[0].float(), ref.float(), atol=1e-2)
        with ilf.bypass(model):
            assert torch.equal(model(**inputs)[0], ref)


def test_guidance_changes_the_output():
    """FLUX.1-dev's guidance embedding reaches cond(t) (a dropped `guidance` would leave the output unchanged)."""
    model = tiny_flux()
    inputs = flux_inputs(model)
    with torch.no_grad():
        a = _plain(model, inputs)[0]
        inputs["guidance"] = torch.full((2,), 1.0)
        b = _plain(model, inputs)[0]
        assert torch.equal(b, model(**inputs)[0])
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("argument", ["controlnet_block_samples", "controlnet_single_block_samples",
                                      "ip_adapter_image_embeds"])
def test_unsupported_inputs_are_refused_by_name(argument):
    model = tiny_flux()
    inputs = flux_inputs(model)
    if argument == "ip_adapter_image_embeds":
        inputs["joint_attention_kwargs"] = {argument: [torch.zeros(2, 1, 8)]}
    else:
        inputs[argument] = [torch.zeros(2, 16, 16)]
    apply_feedback(model, FeedbackConfig(1, 3))
    with torch.no_grad(), pytest.raises(UnsupportedModelError, match=argument):
        model(**inputs)
    if argument == "ip_adapter_image_embeds":
        assert argument in inputs["joint_attention_kwargs"]  # the caller's dict is left as it was
