"""Prompt sets shipped with the package (the video prompts: VBench's overall-consistency dimension)."""
import hashlib

from ilf.harness.prompts import TASK_OF_SET, load_prompt_set


def test_vbench_overall_consistency_is_the_published_file_in_order():
    from importlib.resources import files

    items = load_prompt_set("vbench-overall-consistency")
    assert len(items) == 93 and TASK_OF_SET["vbench-overall-consistency"] == "t2v"
    assert items[0].prompt_id == "vbench-oc-000" and items[0].prompt == "Close up of grapes on a rotating table."
    assert items[-1].prompt == "Yellow flowers swing in the wind" and items[-1].class_label is None
    assert len({i.prompt_id for i in items}) == 93
    assert [i.prompt for i in load_prompt_set("vbench-overall-consistency", 2)] == [i.prompt for i in items[:2]]
    # the copy is byte-for-byte the source file (5,067 characters, no final newline) plus a final newline
    text = files("ilf").joinpath("data", "vbench_overall_consistency.txt").read_bytes()
    assert len(text) == 5068 and text.endswith(b"wind\n") and b"\r" not in text
    assert hashlib.sha256(text).hexdigest() == VBENCH_SHA256


VBENCH_SHA256 = "9f6b76d9bf340592cb589fa4fa6909ddd243b6d3b43a4a29695b91003659e33a"  # pinned: a changed copy fails
