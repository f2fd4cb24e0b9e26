"""The peers on the tiny FluxPipeline (double- then single-stream blocks): attach, reset per run, count, remove."""
import pytest
import torch
from tiny_flux import run_flux, tiny_flux_pipeline

from ilf import AlreadyAttachedError, FeedbackConfig, apply_feedback, count_block_forwards, remove
from ilf.peers import apply_peer, calibrate_magcache, get_peer, peer_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N, S = 5, 8  # 2 double + 3 single blocks, steps
PEERS = {
    "fbcache": {"threshold": 0.2},
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 2},
    "magcache": {"threshold": 0.5},
    "dbcache-static": {"compute_steps": 4},
    "dbcache-dynamic": {"policy": "dynamic", "residual_diff_threshold": 0.5, "max_warmup_steps": 2},
}


def _counted(pipe, seed=0, **kw):
    with count_block_forwards(pipe) as c:
        out = run_flux(pipe, S, seed=seed, **kw)
    return out, c.count


@pytest.mark.parametrize("row", sorted(PEERS))
def test_attach_reset_count_remove(row):
    pipe = tiny_flux_pipeline()
    base, n = _counted(pipe)  # FluxPipeline's `cache_context` gives the transformer a hook registry of its own
    before = {name: sorted(m.__dict__) for name, m in pipe.transformer.named_modules()}
    name, settings = row.split("-")[0], dict(PEERS[row])
    if name == "magcache":
        settings["mag_ratios"] = calibrate_magcache(pipe, lambda: run_flux(pipe, S), S)
    cfg = peer_config(name, settings)
    apply_peer(pipe, cfg, num_steps=S)
    a, na = _counted(pipe)
    _counted(pipe, seed=5)  # another image in between: per-run state must not leak into the next run
    b, nb = _counted(pipe)
    assert torch.equal(a, b) and na == nb
    expected = cfg.expected_block_forwards(N, S)
    if expected == "dynamic":
        assert N <= na < n  # something was skipped, something ran
    else:
        assert na == expected
    if name == "taylorseer":  # every block of the sequence, single-stream ones too
        assert expected == N * len(cfg.compute_steps(S)) < n
    assert not torch.equal(a, base)
    if name != "dbcache":
        assert get_peer(pipe.transformer).info["runtime"].runs == 3  # run starts found on the t / 1000 timesteps
    remove(pipe)
    c, nc = _counted(pipe)
    assert torch.equal(c, base) and nc == n
    assert {name: sorted(m.__dict__) for name, m in pipe.transformer.named_modules()} == before


def test_first_block_cache_keeps_cond_and_uncond_apart():
    """`true_cfg_scale`: the pipeline's cond and uncond calls each keep their own FirstBlockCache state (the
    pipeline's `cache_context`), so with a huge threshold both compute every block at step 0 and block 0 after."""
    pipe = tiny_flux_pipeline()
    apply_peer(pipe, peer_config("fbcache", {"threshold": 1e9}))
    _, count = _counted(pipe, true_cfg_scale=2.0)
    assert count == 2 * (N + S - 1)


def test_diffusers_cache_hook_inside_the_blocks_is_refused():
    pipe = tiny_flux_pipeline()
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(AlreadyAttachedError, match="single_transformer_blocks|transformer_blocks"):
        apply_feedback(pipe, FeedbackConfig(1, 3))


@pytest.mark.parametrize("row", ["dbcache-static", "taylorseer"])
def test_static_peers_count_both_calls_of_true_cfg(row):
    """`true_cfg_scale`: a static peer's schedule is per step, so the cond and uncond calls of a step each cost the
    analytic count: 2 x `expected_block_forwards`. cache-dit counts each FluxPipeline call as a step unless told that
    guidance runs as two calls (`separate_cfg: true`, cache-dit's `enable_separate_cfg`)."""
    name, settings = row.split("-")[0], dict(PEERS[row])
    pipe = tiny_flux_pipeline()
    cfg = peer_config(name, {**settings, "separate_cfg": True} if name == "dbcache" else settings)
    apply_peer(pipe, cfg, num_steps=S)
    _, count = _counted(pipe, true_cfg_scale=2.0)
    assert count == 2 * cfg.expected_block_forwards(N, S)
    if name == "dbcache":  # cache-dit's default for FluxPipeline: each call a step, so the mask runs out of step
        remove(pipe)
        apply_peer(pipe, peer_config(name, settings), num_steps=S)
        _, default = _counted(pipe, true_cfg_scale=2.0)
        assert default != count


def test_dbcache_separate_cfg_must_be_a_boolean():
    from ilf import ILFConfigError

    with pytest.raises(ILFConfigError, match="dbcache.separate_cfg"):
        peer_config("dbcache", {**PEERS["dbcache-static"], "separate_cfg": "yes"}).validate(N, S)


@pytest.mark.parametrize("name", ["fbcache", "taylorseer"])
def test_diffusers_peer_attaches_again_after_remove(name):
    """After a pipeline call the transformer has a hook registry (FluxPipeline's `cache_context`) that the peer's hooks
    join; removing the peer takes them out of it again, so the same peer attaches again and counts as before."""
    pipe = tiny_flux_pipeline()
    _counted(pipe)
    cfg = peer_config(name, PEERS[name])
    apply_peer(pipe, cfg, num_steps=S)
    a, na = _counted(pipe)
    remove(pipe)
    assert list(pipe.transformer._diffusers_hook.hooks) == []
    apply_peer(pipe, cfg, num_steps=S)
    b, nb = _counted(pipe)
    assert torch.equal(a, b) and na == nb
