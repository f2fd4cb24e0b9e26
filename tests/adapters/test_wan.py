"""The Wan adapter: plain_forward against the stock forward; refused inputs."""
import pytest
import torch

from ilf import UnsupportedModelError
from ilf.adapters import adapter_for, plain_forward
from tiny_wan import as_loaded, tiny_wan, wan_inputs

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]  # floats across code paths; tiny models

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _plain(model, **inputs):
    adapter = adapter_for(model)
    return plain_forward(adapter, model, adapter.prepare(model, **inputs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loaded", [True, False], ids=["as-loaded", "all-cast"])
@pytest.mark.parametrize("return_dict", [True, False])
def test_plain_forward_equals_stock(dtype, loaded, return_dict):
    """As `from_pretrained(torch_dtype=...)` loads it (time embedder, norms, tables in float32), and all cast."""
    model = as_loaded(tiny_wan(num_layers=3), dtype) if loaded else tiny_wan(num_layers=3).to(dtype)
    inputs = wan_inputs(dtype=dtype)
    inputs["timestep"] = torch.tensor([999, 429])  # UniPC's integer timesteps, as WanPipeline passes them
    with torch.no_grad():
        ref = model(**inputs, return_dict=return_dict, attention_kwargs={})
        out = _plain(model, **inputs, return_dict=return_dict, attention_kwargs={})
    ref, out = (ref.sample, out.sample) if return_dict else (ref[0], out[0])
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape == inputs["hidden_states"].shape
    assert torch.equal(out, ref)
    assert ref.float().std() > 0.1  # the compared values are spread


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_forward_equals_stock_image_to_video(dtype):
    """Wan 2.1 I2V: CLIP image tokens (`encoder_hidden_states_image`) and image latents concatenated channel-wise."""
    model = as_loaded(tiny_wan(num_layers=2, in_channels=8, image_dim=12, added_kv_proj_dim=16), dtype)
    inputs = wan_inputs(dtype=dtype)
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"]] * 2, dim=1)
    inputs["encoder_hidden_states_image"] = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        ref = model(**inputs).sample
        out = _plain(model, **inputs).sample
    assert torch.equal(out, ref)
    with torch.no_grad():  # the image tokens matter
        assert not torch.equal(model(**{**inputs, "encoder_hidden_states_image": -inputs[
            "encoder_hidden_states_image"]}).sample, ref)


def test_plain_forward_equals_stock_with_gradient_checkpointing():
    model = tiny_wan(num_layers=2).train()
    model.enable_gradient_checkpointing()
    inputs = wan_inputs()
    ref = model(**inputs).sample
    out = _plain(model, **inputs).sample
    assert torch.equal(out, ref)
    out.sum().backward()
    assert model.blocks[0].ffn.net[0].proj.weight.grad is not None


def test_per_token_timestep_is_refused():
    """Wan 2.2 TI2V (`expand_timesteps=True`) passes a (B, tokens) timestep: refused, naming it."""
    model = tiny_wan(num_layers=1)
    inputs = wan_inputs()
    inputs["timestep"] = inputs["timestep"][:, None].expand(2, 8)
    with torch.no_grad():
        model(**inputs)  # the stock forward accepts it
        with pytest.raises(UnsupportedModelError, match="expand_timesteps"):
            adapter_for(model).prepare(model, **inputs)


def test_lora_scale_is_refused_only_with_lora_layers():
    model = tiny_wan(num_layers=1)
    inputs = wan_inputs()
    adapter_for(model).prepare(model, **inputs, attention_kwargs={"scale": 0.5})  # no LoRA: no effect, as stock
    model._hf_peft_config_loaded = True
    with pytest.raises(UnsupportedModelError, match=r"attention_kwargs\['scale'\]"):
        adapter_for(model).prepare(model, **inputs, attention_kwargs={"scale": 0.5})
    adapter_for(model).prepare(model, **inputs, attention_kwargs={"scale": 1.0})
