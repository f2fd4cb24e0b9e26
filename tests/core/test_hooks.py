"""ILF and the cache as hooks among diffusers' hooks (diffusers.hooks.HookRegistry)."""
import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook

import ilf
from ilf import AlreadyAttachedError, CacheConfig, FeedbackConfig, remove
from methods import METHODS
from tiny import run_pipeline, tiny_pipeline


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]  # tests/conftest.py


class Scale(ModelHook):
    """A model-level hook (pre/post only): counts calls and doubles the output."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def post_forward(self, module, output):
        self.calls += 1
        output.sample = output.sample * 2
        return output


class Negate(ModelHook):
    """A model-level hook with its own `new_forward` that calls the forward below it."""

    def new_forward(self, module, *args, **kwargs):
        out = self.fn_ref.original_forward(*args, **kwargs)
        out.sample = -out.sample
        return out


class Count(ModelHook):
    """A stateless block-level hook: counts calls of one block."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def _x(model):
    from tiny import model_inputs as _inputs
    return _inputs(model)


@pytest.mark.parametrize("method", ["ilf", "cache"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_model_hooks_wrap_ours_in_either_order(method, order):
    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    model = pipe.transformer
    inputs = _x(model)
    with torch.no_grad():
        stock = model(**inputs).sample
        METHODS[method](pipe)
        ours = model(**inputs).sample
        ilf.reset(pipe)
        remove(pipe)
        registry = HookRegistry.check_if_exists_or_initialize(model)
        scale, negate = Scale(), Negate()
        if order == "before":
            registry.register_hook(scale, "scale")
            registry.register_hook(negate, "negate")
            METHODS[method](pipe)
        else:
            METHODS[method](pipe)
            registry.register_hook(scale, "scale")
            registry.register_hook(negate, "negate")
        torch.testing.assert_close(model(**inputs).sample, -2 * ours)  # both hooks ran around our method
        assert scale.calls == 1
        remove(pipe)  # takes off exactly ours
        assert registry._hook_order == ["scale", "negate"] and "ilf" not in registry.hooks
        torch.testing.assert_close(model(**inputs).sample, -2 * stock)
        assert scale.calls == 2
        registry.remove_hook("negate")
        registry.remove_hook("scale")
        torch.testing.assert_close(model(**inputs).sample, stock, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["ilf", "cache"])
def test_remove_of_a_hook_above_keeps_ours(method):
    pipe = tiny_pipeline("dit", num_layers=4)
    model = pipe.transformer
    base = torch.as_tensor(run_pipeline(pipe, 3))
    METHODS[method](pipe)
    ours = torch.as_tensor(run_pipeline(pipe, 3))
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(Count(), "count")
    registry.remove_hook("count")
    torch.testing.assert_close(torch.as_tensor(run_pipeline(pipe, 3)), ours, rtol=0, atol=0)
    remove(pipe)
    assert torch.equal(torch.as_tensor(run_pipeline(pipe, 3)), base)
    assert "forward" not in model.__dict__


def test_block_hooks_keep_running_inside_the_loop():
    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    counts = {}
    for i in (0, 1, 2, 3):
        counts[i] = Count()
        HookRegistry.check_if_exists_or_initialize(pipe.transformer.transformer_blocks[i]).register_hook(counts[i], "count")
    ilf.apply_feedback(pipe, FeedbackConfig(1, 2, "first:2"))  # loop blocks 1..2 run twice on 2 of 3 steps
    run_pipeline(pipe, 3)
    assert [counts[i].calls for i in range(4)] == [3, 5, 5, 3]
    remove(pipe)
    ilf.apply_cache(pipe, CacheConfig("inner", 2, 2))  # inner 2 of 4: blocks 1, 2 skipped on step 1
    run_pipeline(pipe, 3)
    assert [counts[i].calls for i in range(4)] == [6, 7, 7, 6]


def test_faster_cache_before_and_after_ilf():
    from diffusers import FasterCacheConfig, apply_faster_cache

    def run(order):
        pipe = tiny_pipeline("pixart-alpha", num_layers=4)
        timestep = {"t": 1000}
        config = FasterCacheConfig(spatial_attention_block_skip_range=None, unconditional_batch_skip_range=2,
                                   unconditional_batch_timestep_skip_range=(-1, 1001), tensor_format="BCHW",
                                   current_timestep_callback=lambda: timestep["t"])
        if order == "before":
            apply_faster_cache(pipe.transformer, config)
        METHODS["ilf"](pipe)
        if order == "after":
            apply_faster_cache(pipe.transformer, config)
        hook = pipe.transformer._diffusers_hook.get_hook("faster_cache_denoiser")
        out = torch.as_tensor(run_pipeline(pipe, 4))
        assert hook.state.iteration == 4  # FasterCache's model-level hook ran on every step
        return pipe, out

    pipe_before, before = run("before")
    _, after = run("after")
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    plain = tiny_pipeline("pixart-alpha", num_layers=4)
    METHODS["ilf"](plain)
    assert not torch.allclose(torch.as_tensor(run_pipeline(plain, 4)), before, atol=1e-4)  # it skipped uncond
    remove(pipe_before)
    assert pipe_before.transformer._diffusers_hook._hook_order == ["faster_cache_denoiser"]


@pytest.mark.parametrize("method", ["ilf", "cache"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_block_cache_hook_and_ours_raise_naming_both(method, order):
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = tiny_pipeline("dit", num_layers=4)
    if order == "before":
        apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
        with pytest.raises(AlreadyAttachedError, match=r"(?s)(ILF|cache).*FBCHeadBlockHook.*transformer_blocks\.0"):
            METHODS[method](pipe)
        assert ilf.get_attachment(pipe) is None
    else:
        METHODS[method](pipe)
        apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
        with pytest.raises(AlreadyAttachedError, match=r"(?s)(ILF|cache).*FBCHeadBlockHook"):
            run_pipeline(pipe, 2)


def test_reset_stateful_hooks_resets_the_cache():
    pipe = tiny_pipeline("dit", num_layers=4)
    ilf.apply_cache(pipe, CacheConfig("inner", 2, 2))
    run_pipeline(pipe, 3)
    state = ilf.get_attachment(pipe)
    assert state.method.has_state()
    pipe.transformer._diffusers_hook.reset_stateful_hooks()
    assert not state.method.has_state()


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_group_offloading_before_and_after_ilf(offload_type, order):
    """diffusers' group offloading on the blocks (onload = offload = CPU here: its hooks, not a transfer): F is a
    plain copy of block e (the offloading hook's state is not copied) and the run equals one without offloading."""
    from diffusers.hooks import apply_group_offloading

    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    plain = tiny_pipeline("pixart-alpha", num_layers=4)
    METHODS["ilf"](plain)
    cpu = torch.device("cpu")
    kwargs = dict(onload_device=cpu, offload_device=cpu, offload_type=offload_type)
    if offload_type == "block_level":
        kwargs["num_blocks_per_group"] = 1
    if order == "before":
        apply_group_offloading(pipe.transformer, **kwargs)
    model = METHODS["ilf"](pipe)
    if order == "after":
        apply_group_offloading(pipe.transformer, **kwargs)
    assert all("_diffusers_hook" not in m.__dict__ for m in model.ilf_feedback.modules())
    assert torch.equal(torch.as_tensor(run_pipeline(pipe, 2)), torch.as_tensor(run_pipeline(plain, 2)))
