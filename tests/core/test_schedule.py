"""Feedback-aware inference scheduling: which steps run feedback and the t_post of eqs. 4-5."""
import pytest

from ilf import FeedbackConfig, resolve_feedback_steps
from ilf.config import cached_block_indices, CacheConfig
from ilf.schedule import loop_ratio, post_feedback_timestep


@pytest.mark.parametrize("spec,steps,expected", [
    ("all", 4, [0, 1, 2, 3]), ("none", 4, []), ("first:2", 5, [0, 1]), ("last:2", 5, [3, 4]),
    ("outer:4", 10, [0, 1, 8, 9]), ("skip-inner:6", 10, [0, 1, 8, 9]), ("skip-inner:8", 12, [0, 1, 10, 11]),
    ("outer:3", 6, [0, 1, 5]), ("alternating", 5, [0, 2, 4]), ([3, 1], 5, [1, 3]), ("skip-inner:4", 12,
                                                                                    [0, 1, 2, 3, 8, 9, 10, 11]),
])
def test_resolve(spec, steps, expected):
    assert resolve_feedback_steps(spec, steps) == expected


def test_ratio_readings():
    assert loop_ratio(FeedbackConfig(8, 19, ratio="n/m"), 28) == pytest.approx(28 / 12)  # eq. 4 as printed
    assert loop_ratio(FeedbackConfig(8, 19), 28) == pytest.approx(12 / 28)  # the default (METHOD.md)


@pytest.mark.parametrize("strategy,t,t_next,step,expected", [
    ("default", 999, 899, 0, 999.0),
    ("uniform", 999, 899, 0, 949.0),
    ("rescale", 999, 899, 0, 999 - 100 * 28 / 12),  # eq. 4
    ("anneal", 999, 899, 0, 999 - 100 * 28 / 12),  # first step as rescale
    ("anneal", 500, 400, 5, 500 - max(100 * 28 / 12 * 0.5, 10)),  # eq. 5
    ("anneal", 30, 20, 9, 20.0),  # the floor of 10
    ("rescale", 100, 0, 9, 0.0),  # clamped to [0, T-1]
])
def test_t_post(strategy, t, t_next, step, expected):
    cfg = FeedbackConfig(8, 19, t_post=strategy, ratio="n/m")  # eq. 4 as printed
    assert post_feedback_timestep(cfg, 28, t, t_next, step) == pytest.approx(expected)


def test_m_over_n_stays_between_t_and_next():
    cfg = FeedbackConfig(8, 19, t_post="rescale", ratio="m/n")
    tp = post_feedback_timestep(cfg, 28, 999, 899, 0)
    assert 899 < tp < 999


@pytest.mark.parametrize("loc,c,expected", [
    ("first", 3, [0, 1, 2]), ("last", 3, [25, 26, 27]), ("outer", 4, [0, 1, 26, 27]),
    ("inner", 18, list(range(5, 23))), ("alternating", 4, [0, 7, 14, 21]),
])
def test_cache_locations(loc, c, expected):
    assert cached_block_indices(CacheConfig(loc, c, 2), 28) == expected
