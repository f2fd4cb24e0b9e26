"""Every peer in a run of another step count than it was attached for, and in a run without guidance.

A peer either follows the run it is in (its compute steps spread over the run, or its rule counted from the run's
start) or refuses at the run's first call, before any block runs, naming the field, its step count and the run's.
FasterCache refuses a batch without classifier-free guidance; the others run such a batch per image as they do
a guidance batch.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DiTPipeline

from ilf import count_block_forwards
from ilf.errors import ILFConfigError, UnsupportedModelError
from ilf.peers import PEERS, apply_peer, peer_config, remove_peer, reset_peer
from tiny import prompt_embeds, tiny_pipeline

N, ATTACHED = 6, 10  # tiny depth; the step count every peer is attached for
MID = N // 2  # a middle block: DBCache F1B0, FirstBlockCache, MagCache and TaylorSeer skip it on their cached steps

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def call(pipe, steps: int, images: tuple[int, ...] = (0,), guidance_scale: float = 4.5) -> torch.Tensor:
    """One pipeline call generating image i of a fixed set for each i in `images` (its own prompt/class and seed)."""
    gens = [torch.Generator().manual_seed(i) for i in images]
    if isinstance(pipe, DiTPipeline):
        out = pipe(class_labels=[3 + 2 * i for i in images], num_inference_steps=steps, generator=gens,
                   guidance_scale=guidance_scale, output_type="np").images
    else:
        emb = {k: v[list(images)] if torch.is_tensor(v) else v for k, v in prompt_embeds(batch=2).items()}
        out = pipe(num_inference_steps=steps, generator=gens, guidance_scale=guidance_scale, height=16, width=16,
                   output_type="latent", use_resolution_binning=False, **emb).images
    return torch.as_tensor(out)


def needs_library(name: str) -> None:
    if name == "dbcache":  # an optional library, as in tests/peers/test_cache_dit.py
        pytest.importorskip("cache_dit")


def traced(pipe, steps: int, **kw) -> tuple[list[int], int]:
    """(the steps on which the middle block computed, block forwards of the call)."""
    seen: list[int] = []
    hook = pipe.transformer.transformer_blocks[MID].norm1.register_forward_hook(
        lambda *_: seen.append(pipe.scheduler.step_index or 0))  # step_index is None until step 0 ends
    try:
        with count_block_forwards(pipe) as c:
            call(pipe, steps, **kw)
    finally:
        hook.remove()
    return sorted(set(seen)), c.count


# peer settings attached for ATTACHED steps -> what a run of S steps does: {S: compute steps} or a refusal pattern
MASK10 = [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
STEP_CASES = {
    # K = 4 compute steps re-spread over the run, first and last included: round(i * (S - 1) / 3)
    "dbcache-compute_steps": ("dbcache", {"compute_steps": 4},
                              {12: [0, 4, 7, 11], 20: [0, 6, 13, 19],
                               2: r"dbcache\.compute_steps=4 .*this run has 2; attached with num_steps=10"}),
    "dbcache-mask": ("dbcache", {"mask": MASK10},
                     {s: rf"dbcache\.mask=.* expected {s} entries.*the mask 10" for s in (12, 20, 2)}),
    "magcache": ("magcache", {"mag_ratios": [1.0] * ATTACHED},
                 {s: rf"magcache\.num_inference_steps=10 .*it has {s} steps" for s in (12, 20, 2)}),
    # absolute step rules, counted from the run's start (diffusers' own): the same rule at any step count
    "taylorseer": ("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 2, "disable_cache_after_step": 8},
                   {12: [0, 1, 3, 5, 7, 8, 9, 10, 11], 20: [0, 1, 3, 5, 7, *range(8, 20)], 2: [0, 1]}),
    # no step rule: thresholds (0: never reuse) and timestep ranges; every step of any run computes the block
    "dbcache-dynamic": ("dbcache", {"policy": "dynamic", "residual_diff_threshold": 0.0, "max_warmup_steps": 2},
                        {s: list(range(s)) for s in (12, 20, 2)}),
    "fbcache": ("fbcache", {"threshold": 0.0}, {s: list(range(s)) for s in (12, 20, 2)}),
    "pab": ("pab", {"spatial_skip_range": 2, "timestep_skip_range": [-1, 1001]},
            {s: list(range(s)) for s in (12, 20, 2)}),
    "fastercache": ("fastercache", {}, {s: list(range(s)) for s in (12, 20, 2)}),
}


def test_every_peer_has_a_step_count_case():
    assert {name for name, _, _ in STEP_CASES.values()} == set(PEERS)


@pytest.mark.parametrize("kind,case", [(k, c) for k in ("pixart-alpha", "dit") for c in sorted(STEP_CASES)
                                       if (k, c) != ("dit", "fastercache")])  # FasterCache is refused on DiT
def test_a_run_of_another_step_count_follows_the_run_or_is_refused_at_its_start(kind, case):
    name, settings, expect = STEP_CASES[case]
    needs_library(name)
    pipe = tiny_pipeline(kind, num_layers=N)
    cfg = peer_config(name, settings)
    apply_peer(pipe, cfg, num_steps=ATTACHED)
    for steps, want in expect.items():
        if isinstance(want, str):
            with count_block_forwards(pipe) as c, pytest.raises(ILFConfigError, match=want):
                call(pipe, steps)
            assert c.count == 0  # refused at the run's first call: no block ran
        else:
            computed, count = traced(pipe, steps)
            assert computed == want and computed[-1] == steps - 1  # the run's last step computes
            expected = cfg.expected_block_forwards(N, steps)
            assert expected == "dynamic" or count == expected
    attached, _ = traced(pipe, ATTACHED)  # a refusal leaves the peer working for the step count it was made for
    assert attached[0] == 0
    remove_peer(pipe)


def test_dbcache_needs_no_step_count_but_where_nothing_tells_the_runs():
    needs_library("dbcache")
    pipe = tiny_pipeline("pixart-alpha", num_layers=N)
    cfg = peer_config("dbcache", {"compute_steps": 4})
    apply_peer(pipe, cfg)  # a pipeline: each run's steps come from its scheduler
    assert traced(pipe, 12)[0] == [0, 4, 7, 11]
    remove_peer(pipe)
    apply_peer(pipe.transformer, cfg, num_steps=ATTACHED, scheduler=pipe.scheduler)
    assert traced(pipe, 20)[0] == [0, 6, 13, 19]
    assert traced(pipe, 12)[0] == [0, 4, 7, 11]
    remove_peer(pipe)
    with pytest.raises(ILFConfigError, match="num_steps"):  # no scheduler: the runs' steps cannot be told
        apply_peer(pipe.transformer, cfg)
    apply_peer(pipe.transformer, cfg, num_steps=ATTACHED)  # no scheduler: the mask is made for num_steps
    with pytest.raises(ILFConfigError, match=r"num_steps=10 .*call 11 since the last reset_peer"):
        call(pipe, 12)
    reset_peer(pipe.transformer)
    assert traced(pipe, ATTACHED)[0] == [0, 3, 6, 9]
    remove_peer(pipe)


# settings whose skip decisions do not depend on the images (so a batch of two images skips as each alone does)
GUIDANCE_CASES = {
    "dbcache-static": ("dbcache", {"compute_steps": 3}),
    "dbcache-taylorseer": ("dbcache", {"compute_steps": 3, "taylorseer": True}),
    "dbcache-dynamic": ("dbcache", {"policy": "dynamic", "residual_diff_threshold": 1e9, "max_warmup_steps": 2}),
    "fbcache": ("fbcache", {"threshold": 1e9}),
    "magcache": ("magcache", {"mag_ratios": [1.0] * 8}),
    "taylorseer": ("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 2}),
    "pab": ("pab", {"spatial_skip_range": 2, "timestep_skip_range": [-1, 1001]}),
    "fastercache": ("fastercache", {"spatial_timestep_skip_range": [-1, 1001],
                                    "unconditional_batch_timestep_skip_range": [-1, 1001]}),
    "fastercache-defaults": ("fastercache", {}),
}


def test_every_peer_has_a_guidance_case():
    assert {name for name, _ in GUIDANCE_CASES.values()} == set(PEERS)


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
@pytest.mark.parametrize("case", sorted(GUIDANCE_CASES))
def test_a_run_without_guidance_runs_per_image_or_is_refused_at_its_start(case, kind):
    name, settings = GUIDANCE_CASES[case]
    needs_library(name)
    steps = 8
    pipe = tiny_pipeline(kind, num_layers=N)
    base = call(pipe, steps, images=(0, 1), guidance_scale=1.0)
    cfg = peer_config(name, settings)
    if name == "fastercache" and kind == "dit":
        with pytest.raises(UnsupportedModelError, match="FasterCache"):
            apply_peer(pipe, cfg, num_steps=steps)
        return
    apply_peer(pipe, cfg, num_steps=steps)
    if name == "fastercache":  # one or two images at guidance 1: no unconditional half to split off
        for images in ((0, 1), (0,)):  # two images ran silently, image 0 as image 1's unconditional half
            refused = rf"guidance_scale=.*FasterCache.*batch of {len(images)} has none"
            with count_block_forwards(pipe) as c, pytest.raises(ILFConfigError, match=refused):
                call(pipe, steps, images=images, guidance_scale=1.0)
            assert c.count == 0  # refused at the run's first call: no block ran
        call(pipe, steps, images=(0, 1))  # with guidance it runs
    else:
        singles, counts = [], []
        for i in (0, 1):
            with count_block_forwards(pipe) as c:
                singles.append(call(pipe, steps, images=(i,), guidance_scale=1.0)[0])
            counts.append(c.count)
        with count_block_forwards(pipe) as c:
            both = call(pipe, steps, images=(0, 1), guidance_scale=1.0)
        assert c.count == counts[0] == counts[1]  # one call skips for the batch as for each image alone
        expected = cfg.expected_block_forwards(N, steps)
        assert expected == "dynamic" or c.count == expected
        assert not torch.equal(both, base)  # the peer acted
        for i in (0, 1):  # each image as generated alone: batching only reorders float32 reductions (relative
            # error ~1e-7 per op, far below 1e-4 of the output's scale after N * steps = 48 block calls), while an
            # image treated as another's unconditional half (FasterCache's fault) moves by the output's own scale
            scale = singles[i].abs().max()
            assert (both[i] - singles[i]).abs().max() <= 1e-4 * scale
    remove_peer(pipe)


def test_magcache_ratios_of_another_step_count_are_refused():
    with pytest.raises(ILFConfigError, match=r"magcache\.mag_ratios='8 ratios' .*expected 10, one per step"):
        peer_config("magcache", {"mag_ratios": [1.0] * 8, "num_inference_steps": 10})
    with pytest.raises(ILFConfigError, match=r"magcache\.mag_ratios"):
        peer_config("magcache", {"mag_ratios": [1.0] * 8}).validate(N, 10)
