"""The field's caches on a tiny stock `StableDiffusion3Pipeline`: attach, reset per run, count and remove as on PixArt;
FirstBlockCache and TaylorSeer on the `context_pre_only` last block are refused."""
import pytest
import torch

import ilf
from ilf import UnsupportedModelError
from ilf.peers import apply_peer, calibrate_magcache, peer_config
from tiny_sd3 import run_sd3, tiny_sd3_pipeline

STEPS = 8


@pytest.mark.parametrize("name,settings", [
    ("dbcache", {"compute_steps": 4}),
    ("dbcache", {"policy": "dynamic", "residual_diff_threshold": 0.5, "max_warmup_steps": 2}),
    ("magcache", {"threshold": 0.5}),
    ("pab", {}),
    ("taylorseer", {"modules": [r"transformer_blocks\.[0-4]"]}),  # the last block left out
])
def test_peer_attaches_resets_counts_and_removes(name, settings):
    pipe = tiny_sd3_pipeline(6)
    base = run_sd3(pipe, STEPS)
    if name == "magcache":
        settings = dict(settings, mag_ratios=calibrate_magcache(pipe, lambda: run_sd3(pipe, STEPS), STEPS))
    config = peer_config(name, settings)
    apply_peer(pipe, config, num_steps=STEPS)
    counts, outs = [], []
    for _ in range(2):  # per-run state is reset at each run's first call: the same image twice
        with ilf.count_block_forwards(pipe) as counter:
            outs.append(run_sd3(pipe, STEPS))
        counts.append(counter.count)
    assert torch.equal(outs[0], outs[1]) and counts[0] == counts[1]
    expected = config.expected_block_forwards(6, STEPS)
    if expected == "dynamic":
        assert 6 <= counts[0] < 6 * STEPS
    elif name == "taylorseer":  # blocks 0..4 on the compute steps, the last block on every step
        assert counts[0] == 5 * len(config.compute_steps(STEPS)) + STEPS
    else:
        assert counts[0] == expected
    assert not torch.equal(outs[0], base)
    ilf.remove(pipe)
    assert torch.equal(run_sd3(pipe, STEPS), base)


@pytest.mark.parametrize("name", ["fbcache", "taylorseer"])
def test_hooks_that_need_every_block_output_are_refused(name):
    pipe = tiny_sd3_pipeline(4)
    with pytest.raises(UnsupportedModelError, match=r"context_pre_only.*None"):
        apply_peer(pipe, peer_config(name, {}), num_steps=STEPS)
    assert ilf.peers.get_peer(pipe.transformer) is None and "_diffusers_hook" not in pipe.transformer.__dict__
