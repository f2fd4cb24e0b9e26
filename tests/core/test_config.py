"""Bad input: a ValueError naming the field, the value and what is allowed; the model stays untouched."""
import pytest
import torch

from ilf import (CacheConfig, FeedbackConfig, ILFConfigError, UnsupportedModelError, apply_cache, apply_feedback,
                 expected_block_forwards, resolve_feedback_steps)
from ilf.attach import STATE_ATTR
from tiny import run_pipeline, tiny_pipeline, tiny_pixart

BAD_FEEDBACK = [
    (dict(loop_start=3, loop_end=6), "loop_end"),  # past the last block (6 blocks: 0..5)
    (dict(loop_start=4, loop_end=2), "loop_end"),  # reversed
    (dict(loop_start=-1, loop_end=2), "loop_start"),
    (dict(t_post="sideways"), "t_post"),
    (dict(ratio="n*m"), "ratio"),
    (dict(init="zeros"), "init"),
    (dict(feedback_steps="every:2"), "feedback_steps"),
    (dict(feedback_steps="first:"), "feedback_steps"),
    (dict(feedback_steps="first:0"), "feedback_steps"),
    (dict(feedback_steps=[0, 0]), "feedback_steps"),
    (dict(feedback_steps=[-1]), "feedback_steps"),
    (dict(feedback_steps=3), "feedback_steps"),
]


def _untouched(model, keys):
    assert set(model.state_dict()) == keys
    assert STATE_ATTR not in model.__dict__ and "forward" not in model.__dict__
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kw,field", BAD_FEEDBACK, ids=[f"{k}" for k, _ in BAD_FEEDBACK])
def test_bad_feedback_config(kw, field):
    model = tiny_pixart(num_layers=6)
    keys = set(model.state_dict())
    base = dict(loop_start=1, loop_end=3) | kw
    with pytest.raises(ValueError, match=field) as err:
        apply_feedback(model, FeedbackConfig(**base))
    assert isinstance(err.value, ILFConfigError) and err.value.field == field
    assert repr(err.value.value) in str(err.value) and "expected" in str(err.value)
    _untouched(model, keys)


BAD_CACHE = [
    (dict(location="middle"), "location"),
    (dict(num_cached=7), "num_cached"),  # c > N = 6
    (dict(interval=0), "interval"),
    (dict(num_cached=-2), "num_cached"),
]


@pytest.mark.parametrize("kw,field", BAD_CACHE, ids=[f"{k}" for k, _ in BAD_CACHE])
def test_bad_cache_config(kw, field):
    model = tiny_pixart(num_layers=6)
    keys = set(model.state_dict())
    with pytest.raises(ILFConfigError, match=field):
        apply_cache(model, CacheConfig(**(dict(location="inner", num_cached=2, interval=2) | kw)))
    _untouched(model, keys)


def test_cache_config_former_key_num_blocks_loads_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="`num_cached`"):
        old = CacheConfig.from_dict({"location": "inner", "num_blocks": 18, "interval": 3})
    assert old == CacheConfig(location="inner", num_cached=18, interval=3)
    assert old.to_dict() == {"location": "inner", "num_cached": 18, "interval": 3}
    assert CacheConfig.from_dict(old.to_dict()) == old
    with pytest.warns(DeprecationWarning, match="`num_cached`"):
        assert CacheConfig(location="first", num_blocks=4, interval=2) == CacheConfig("first", 4, 2)
    with pytest.warns(DeprecationWarning, match="`num_cached`"):
        assert old.num_blocks == 18
    with pytest.raises(ILFConfigError, match="num_blocks"):  # both names: which one is meant is unclear
        CacheConfig.from_dict({"num_blocks": 4, "num_cached": 4})
    with pytest.warns(DeprecationWarning):
        deep = CacheConfig(num_blocks=7)
    with pytest.raises(ILFConfigError, match="num_cached"):  # still c, checked against the depth N = 6
        deep.validate(6)
    model = tiny_pixart(num_layers=6)
    with pytest.warns(DeprecationWarning, match="`num_cached`"):
        apply_cache(model, {"location": "inner", "num_blocks": 2, "interval": 2})
    assert model.__dict__[STATE_ATTR].config == CacheConfig("inner", 2, 2)


def test_step_index_past_num_steps():
    with pytest.raises(ILFConfigError, match="feedback_steps"):
        resolve_feedback_steps([0, 12], 10)
    with pytest.raises(ILFConfigError, match="feedback_steps"):
        resolve_feedback_steps("first:11", 10)
    with pytest.raises(ILFConfigError, match="feedback_steps"):
        expected_block_forwards(FeedbackConfig(8, 19, [0, 1, 10]), 28, 10)
    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    apply_feedback(pipe, FeedbackConfig(0, 1, [0, 5]))
    with pytest.raises(ILFConfigError, match="feedback_steps"):  # before any step runs
        run_pipeline(pipe, 3)


@pytest.mark.parametrize("target", [torch.nn.Linear(2, 2), object(), "pixart"])
def test_unsupported_model(target):
    with pytest.raises(UnsupportedModelError, match="PixArtTransformer2DModel"):
        apply_feedback(target, FeedbackConfig())
    with pytest.raises(ValueError):
        apply_cache(target, CacheConfig())


def test_from_dict_rejects_unknown_field():
    with pytest.raises(ILFConfigError, match="loop_begin"):
        FeedbackConfig.from_dict({"loop_begin": 3})
    assert FeedbackConfig.from_dict(FeedbackConfig(2, 5, [0, 3]).to_dict()) == FeedbackConfig(2, 5, [0, 3])


def test_configs_from_dicts_and_wrong_types():
    model = tiny_pixart(num_layers=6)
    apply_feedback(model, {"loop_start": 1, "loop_end": 3, "feedback_steps": "first:1"})
    assert model.ilf_scales.shape == (3,)
    other = tiny_pixart(num_layers=6)
    with pytest.raises(ILFConfigError, match="CacheConfig"):
        apply_cache(other, FeedbackConfig(1, 3))
    with pytest.raises(ILFConfigError, match="location"):
        apply_cache(other, {"location": "middle"})
    assert STATE_ATTR not in other.__dict__


DEPTH_DEPENDENT = {"loop_end=6": dict(loop_start=3, loop_end=6), "num_cached=7": dict(num_cached=7)}


@pytest.mark.parametrize("kw,field", BAD_FEEDBACK + BAD_CACHE, ids=[f"{k}" for k, _ in BAD_FEEDBACK + BAD_CACHE])
def test_bad_values_raise_at_construction(kw, field):
    """A value that is wrong for any backbone fails where the config is written, not later at apply."""
    cls = CacheConfig if field in ("location", "interval", "num_cached") else FeedbackConfig
    base = (dict(location="inner", num_cached=2, interval=2) if cls is CacheConfig else dict(loop_start=1, loop_end=3))
    if kw in DEPTH_DEPENDENT.values():  # fits a deeper backbone: only `validate(num_blocks)` can refuse it
        cfg = cls(**(base | kw))
        with pytest.raises(ILFConfigError, match=field):
            cfg.validate(6)
        return
    with pytest.raises(ILFConfigError, match=field):
        cls(**(base | kw))


def test_cache_config_refuses_both_names_when_they_differ():
    """num_blocks (the former name) beside a different num_cached is refused, not silently preferred."""
    import warnings

    from ilf import CacheConfig
    from ilf.errors import ILFConfigError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ILFConfigError, match="num_blocks=18 .*num_cached=17"):
            CacheConfig(num_blocks=18, num_cached=17)
        assert CacheConfig(num_blocks=12).num_cached == 12
