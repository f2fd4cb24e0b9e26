"""A LoRA through diffusers' `load_lora_weights` (peft) on FLUX and SD3 with ILF: loaded before or after attaching,
fused or not, unloaded again; what F copies from a LoRA-carrying block e; checkpoints without LoRA tensors.

The LoRA is built here (peft's `LoraConfig`, random A and B so it moves the output), saved in diffusers' format
with the pipeline's `save_lora_weights` and loaded with `load_lora_weights(directory)`: the user's path, no download.
"""
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import load_file
from tiny_flux import flux_prompt_embeds, tiny_flux_pipeline
from tiny_sd3 import run_sd3, tiny_sd3_pipeline

import ilf
from ilf import (FeedbackConfig, ILFConfigError, UnsupportedModelError, apply_feedback, count_block_forwards,
                 expected_block_forwards)
from ilf.adapters._lora import has_lora, plain_names
from ilf.checkpoint import CONFIG_NAME, WEIGHTS_NAME

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]  # floats across code paths; tiny models

LOOP = FeedbackConfig(loop_start=1, loop_end=3, t_post="default")  # FLUX: B_1 (double) .. B_3 (single)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "ff.net.2", "proj_mlp"]  # both families' linears
STEPS = 3


def _run_flux(pipe, steps: int = STEPS, **kw) -> torch.Tensor:
    dtype = pipe.transformer.dtype
    emb = {k: v.to(dtype) for k, v in flux_prompt_embeds().items()}
    return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), height=16, width=16,
                output_type="latent", **emb, **kw).images


FAMILIES = {  # name -> (stock pipeline builder, run, pipeline class, number of blocks)
    "flux": (tiny_flux_pipeline, _run_flux, FluxPipeline, 5),
    "sd3": (lambda: tiny_sd3_pipeline(num_layers=5), lambda pipe, **kw: run_sd3(pipe, STEPS, **kw),
            StableDiffusion3Pipeline, 5),
}


def _pipe(family: str, dtype: torch.dtype = torch.float32):
    return FAMILIES[family][0]().to(dtype=dtype)


def _run(family: str, pipe, **kw) -> torch.Tensor:
    return torch.as_tensor(FAMILIES[family][1](pipe, **kw))


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory) -> dict:
    """A rank-2 LoRA per family in diffusers' format (`pytorch_lora_weights.safetensors`), with nonzero A and B."""
    out = {}
    for family, (build, _, pipeline_class, _) in FAMILIES.items():
        transformer = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS,
                                                         init_lora_weights=False), build().transformer)
        path = tmp_path_factory.mktemp(f"lora_{family}")
        pipeline_class.save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(transformer))
        out[family] = path
    return out


def _state(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _plain_block_e(pipe) -> dict:
    """Block e's tensors by the plain block's names (a LoRA-carrying block's base layers)."""
    block = ilf.model_blocks(pipe.transformer)[LOOP.loop_end]
    return plain_names(block, _state(block))


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


CASES = [(f, o, fused, torch.float32) for f in FAMILIES for o in ("before", "after") for fused in (False, True)]
CASES += [("flux", o, False, d) for o in ("before", "after") for d in (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("family,order,fused,dtype", CASES)
def test_lora_with_feedback_equals_the_stock_pipeline_with_it(lora_dirs, family, order, fused, dtype):
    """Zero scales and t_post = t: the run equals the stock pipeline carrying the same LoRA at every stage (loaded,
    fused, unloaded); F is block e as it computed when ILF was attached (LoRA merged, or none: a LoRA loaded later
    leaves F as it was); `remove` restores the stock pipeline and every `requires_grad` flag."""
    stock, pipe = _pipe(family, dtype), _pipe(family, dtype)
    base = _run(family, stock)
    base_e = _plain_block_e(stock)
    if order == "after":
        apply_feedback(pipe, LOOP)
    for p in (stock, pipe):
        p.load_lora_weights(lora_dirs[family])
        if fused:
            p.fuse_lora()
    if order == "before":
        apply_feedback(pipe, LOOP)
    with_lora = _run(family, stock)
    assert (with_lora - base).abs().max() > 1e-2 * base.abs().max()  # the LoRA moves the output
    with count_block_forwards(pipe) as counter:
        assert torch.equal(_run(family, pipe), with_lora)
    assert counter.count == expected_block_forwards(LOOP, FAMILIES[family][3], STEPS)
    feedback = pipe.transformer.ilf_feedback
    assert not has_lora(feedback)  # F holds no LoRA layers, under the plain block's names
    f_state = _state(feedback)
    if order == "after":  # F was copied before the LoRA arrived
        _assert_same_tensors(f_state, base_e)
    else:  # F computes as block e with the LoRA: its merge, as `fuse_lora` merges
        reference = _pipe(family, dtype)
        reference.load_lora_weights(lora_dirs[family])
        reference.fuse_lora()
        _assert_same_tensors(f_state, _plain_block_e(reference))
    for p in (stock, pipe):
        p.unload_lora_weights()  # a fused LoRA stays fused in the base weights, as diffusers documents
    unloaded = _run(family, stock)
    assert torch.equal(_run(family, pipe), unloaded)
    if not fused:
        assert torch.equal(unloaded, base)
    _assert_same_tensors(_state(feedback), f_state)  # F is not the backbone's: unloading leaves it as it was
    ilf.remove(pipe)
    assert torch.equal(_run(family, pipe), unloaded)
    # every flag as it was when ILF was attached ("before": as peft's load left them, base weights frozen)
    attached_to = stock if order == "before" else _pipe(family)
    flags = {n: p.requires_grad for n, p in attached_to.transformer.named_parameters()}
    assert {n: p.requires_grad for n, p in pipe.transformer.named_parameters()} == flags


@pytest.mark.parametrize("family", list(FAMILIES))
def test_remove_restores_the_flags_of_attaching_time_with_a_lora_loaded_since(lora_dirs, family):
    """`remove` gives each parameter back the `requires_grad` it had when ILF was attached, also when a LoRA loaded
    since renamed it (`<layer>.base_layer.weight`); the LoRA's own tensors keep peft's flag (trainable); the output
    is the stock pipeline's with that LoRA."""
    stock, pipe = _pipe(family), _pipe(family)
    pipe.transformer.context_embedder.requires_grad_(False)  # a flag of one's own, to come back
    before = {p: p.requires_grad for p in pipe.transformer.parameters()}
    apply_feedback(pipe, LOOP)
    for p in (stock, pipe):
        p.load_lora_weights(lora_dirs[family])
    ilf.remove(pipe)
    assert torch.equal(_run(family, pipe), _run(family, stock))
    assert all(p.requires_grad == flag for p, flag in before.items())
    assert False in before.values() and True in before.values()
    lora = [p for n, p in pipe.transformer.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_checkpoint_holds_no_lora_tensors_and_loads_with_or_without_lora(lora_dirs, family, tmp_path):
    pipe = _pipe(family)
    pipe.load_lora_weights(lora_dirs[family])
    model = apply_feedback(pipe, LOOP)
    with torch.no_grad():
        for p in model.ilf_feedback.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.ilf_scales.fill_(0.3)
    out = _run(family, pipe)
    ilf.save_feedback(pipe, tmp_path)
    names = [k for k in load_file(tmp_path / WEIGHTS_NAME) if k != "scales"]
    plain = _plain_block_e(_pipe(family))
    assert sorted(names) == sorted(f"feedback.{k}" for k in plain)  # the plain block's names only
    assert "lora" not in (tmp_path / CONFIG_NAME).read_text()
    for with_lora in (False, True):
        fresh = _pipe(family)
        if with_lora:
            fresh.load_lora_weights(lora_dirs[family])
        ilf.load_feedback(fresh, tmp_path)
        _assert_same_tensors(_state(fresh.transformer.ilf_feedback), _state(model.ilf_feedback))
        if with_lora:
            assert torch.equal(_run(family, fresh), out)


@pytest.mark.parametrize("setting", ["weighted", "disabled"])
def test_feedback_block_copies_block_e_as_it_computes(lora_dirs, setting):
    """`set_adapters` weights are merged at their weight; with the LoRA disabled F is the base block."""
    pipe, reference = _pipe("flux"), _pipe("flux")
    for p in (pipe, reference):
        p.load_lora_weights(lora_dirs["flux"], adapter_name="style")
        if setting == "weighted":
            p.set_adapters(["style"], adapter_weights=[0.5])
        else:
            p.disable_lora()
    apply_feedback(pipe, LOOP)
    if setting == "weighted":
        reference.fuse_lora()
        expected = _plain_block_e(reference)
    else:
        expected = _plain_block_e(_pipe("flux"))
    _assert_same_tensors(_state(pipe.transformer.ilf_feedback), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_per_call_lora_scale_is_refused_with_a_lora_loaded(lora_dirs, family):
    """The stock forward's `apply_lora_scale` wrapper is not re-run in pieces: a scale other than 1 is refused
    naming it (FLUX: `UnsupportedModelError`, SD3: `ILFConfigError`); 1 runs as the stock pipeline."""
    pipe = _pipe(family)
    pipe.load_lora_weights(lora_dirs[family])
    apply_feedback(pipe, LOOP)
    with pytest.raises((UnsupportedModelError, ILFConfigError), match="scale"):
        _run(family, pipe, joint_attention_kwargs={"scale": 0.5})
    stock = _pipe(family)
    stock.load_lora_weights(lora_dirs[family])
    assert torch.equal(_run(family, pipe, joint_attention_kwargs={"scale": 1.0}), _run(family, stock))
