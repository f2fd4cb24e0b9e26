"""Each metric scores the images of its own prompt set when a row folder holds several (paper Sec. 4.1)."""
import pytest

from ilf.metrics import group_by_prompt_set


def _records(*sets):
    return [{"index": i, "prompt_set": s} for i, s in enumerate(sets)]


def test_two_sets_route_metrics():
    recs = _records("imagereward-benchmark", "mjhq-30k", "mjhq-30k")
    groups = group_by_prompt_set(["image_reward", "clip_score", "fid_mjhq", "clipiqa_noisy"], recs)
    assert groups == {"imagereward-benchmark": ["image_reward", "clipiqa_noisy"], "mjhq-30k": ["clip_score", "fid_mjhq"]}


def test_single_set_uses_every_image():
    assert group_by_prompt_set(["toy_fid", "toy_adherence"], _records("toy-captions", "toy-captions")) == {
        None: ["toy_fid", "toy_adherence"]}


def test_missing_set_is_an_error():
    with pytest.raises(ValueError, match="mjhq-30k"):
        group_by_prompt_set(["fid_mjhq"], _records("imagereward-benchmark", "toy-captions"))
