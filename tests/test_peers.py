"""The first-block cache peer: attached like ours, counted at run time, exact when it never reuses."""
import pytest
import torch

from ilf import AlreadyAttachedError, FeedbackConfig, apply_feedback, count_block_forwards, expected_block_forwards, remove
from ilf.errors import ILFConfigError
from ilf.peers import FirstBlockCacheConfig, apply_first_block_cache
from tiny import run_pipeline, tiny_pipeline


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _counted(pipe, steps, seed=0):
    with count_block_forwards(pipe) as c:
        out = torch.as_tensor(run_pipeline(pipe, steps, seed=seed))
    return out, c.count


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
def test_threshold_zero_is_the_baseline(kind):
    pipe = tiny_pipeline(kind, num_layers=6)
    base, n = _counted(pipe, 5)
    apply_first_block_cache(pipe, FirstBlockCacheConfig(threshold=0.0, warmup_steps=0))
    out, m = _counted(pipe, 5)
    assert n == m == 6 * 5
    torch.testing.assert_close(out, base, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
@pytest.mark.parametrize("warmup,first", [(1, 1), (2, 2)])
def test_huge_threshold_reuses_every_step_after_warmup(kind, warmup, first):
    pipe = tiny_pipeline(kind, num_layers=6)
    base, _ = _counted(pipe, 5)
    apply_first_block_cache(pipe, FirstBlockCacheConfig(threshold=1e9, warmup_steps=warmup, num_first_blocks=first))
    out, m = _counted(pipe, 5)
    assert m == 6 * warmup + first * (5 - warmup)  # warm-up steps in full, then only the first blocks
    assert not torch.allclose(out, base, atol=1e-5)
    method = pipe.transformer.__dict__["_ilf_attachment"].method
    assert method.skipped_steps == list(range(warmup, 5))


def test_dynamic_threshold_lies_between_and_state_resets():
    pipe = tiny_pipeline("pixart-alpha", num_layers=6)
    apply_first_block_cache(pipe, FirstBlockCacheConfig(threshold=0.05, warmup_steps=1))
    a, na = _counted(pipe, 8)
    _counted(pipe, 8, seed=4)  # another image in between must not leak into the next run
    b, nb = _counted(pipe, 8)
    assert torch.equal(a, b) and na == nb
    assert 6 + 7 <= na <= 6 * 8


def test_analytic_count_is_dynamic():
    assert expected_block_forwards(FirstBlockCacheConfig(), 28, 20) == "dynamic"
    with pytest.raises(ILFConfigError, match="num_first_blocks"):
        expected_block_forwards(FirstBlockCacheConfig(num_first_blocks=28), 28, 20)


def test_remove_restores_and_second_method_raises():
    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    model = pipe.transformer
    before = set(model.__dict__)
    base = torch.as_tensor(run_pipeline(pipe, 4))
    assert apply_first_block_cache(pipe, FirstBlockCacheConfig(threshold=1e9, warmup_steps=1)) is model
    with pytest.raises(AlreadyAttachedError):
        apply_feedback(pipe, FeedbackConfig(0, 1))
    remove(pipe)
    assert set(model.__dict__) == before
    assert torch.equal(torch.as_tensor(run_pipeline(pipe, 4)), base)


@pytest.mark.parametrize("field,value", [("threshold", -0.1), ("threshold", "x"), ("warmup_steps", -1),
                                         ("warmup_steps", 1.5), ("num_first_blocks", 0), ("num_first_blocks", 4)])
def test_bad_config_names_the_field(field, value):
    pipe = tiny_pipeline("pixart-alpha", num_layers=4)
    with pytest.raises(ILFConfigError, match=field):
        apply_first_block_cache(pipe, FirstBlockCacheConfig(**{field: value}))
    assert "_ilf_attachment" not in pipe.transformer.__dict__


def test_from_dict_round_trip_and_unknown_key():
    cfg = FirstBlockCacheConfig(0.2, 3, 2)
    assert FirstBlockCacheConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ILFConfigError, match="thresh"):
        FirstBlockCacheConfig.from_dict({"thresh": 0.1})
