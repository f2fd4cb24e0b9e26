"""cache-dit's DBCache as a peer (ilf.peers.cache_dit): block forwards, static and dynamic, on both backbones."""
import pytest
import torch

from ilf import count_block_forwards, remove
from ilf.errors import ILFConfigError
from ilf.peers import apply_peer, get_peer, peer_config
from tiny import run_pipeline, tiny_pipeline

cache_dit = pytest.importorskip("cache_dit")
N, S = 6, 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _counted(pipe, call):
    with count_block_forwards(pipe) as c, torch.inference_mode():
        out = torch.as_tensor(call())
    return out, c.count


def test_dbcache_on_the_toy_t2i_pipeline_counts_repeats_and_removes():
    """Toy t2i, 20 steps, DBCache F1B0 with 10 of 20 steps computing: 150 block forwards vs 280, identical
    images on two calls, and cache_dit.disable_cache (through remove) restores the baseline exactly."""
    from ilf.toy.pipelines import load_toy_pipeline, toy_call_kwargs

    pipe = load_toy_pipeline("t2i")
    pipe.set_progress_bar_config(disable=True)

    def call():
        return pipe(prompt=["a red circle"], num_inference_steps=20, guidance_scale=4.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **toy_call_kwargs("t2i")).images

    base, n = _counted(pipe, call)
    mask = [1, 0] * 10
    cfg = peer_config("dbcache", {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "mask": mask})
    assert cfg.cache_dit_configs(20)[0].steps_computation_mask == mask
    apply_peer(pipe, cfg, num_steps=20)
    a, na = _counted(pipe, call)
    b, nb = _counted(pipe, call)
    assert (n, na, nb) == (280, 150, 150) and cfg.expected_block_forwards(14, 20) == 150
    assert torch.equal(a, b) and not torch.equal(a, base)
    remove(pipe)
    c, nc = _counted(pipe, call)
    assert nc == 280 and torch.equal(c, base)


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
@pytest.mark.parametrize("settings", [
    {"compute_steps": 3, "Bn_compute_blocks": 1},
    {"compute_steps": 3, "taylorseer": True},
    {"policy": "dynamic", "residual_diff_threshold": 0.2, "max_warmup_steps": 2},
], ids=["static-F1B1", "static-taylorseer", "dynamic"])
@pytest.mark.parametrize("bare", [False, True], ids=["pipeline", "transformer+scheduler"])
def test_attach_reset_count_remove(kind, settings, bare):
    pipe = tiny_pipeline(kind, num_layers=N)
    model = pipe.transformer
    before = {k: model.__dict__[k] for k in model.__dict__ if k != "_modules"}
    keys = list(model.state_dict())
    blocks = list(model.transformer_blocks)
    base, n = _counted(pipe, lambda: run_pipeline(pipe, S))
    cfg = peer_config("dbcache", settings)
    apply_peer(model if bare else pipe, cfg, num_steps=S, scheduler=pipe.scheduler if bare else None)
    a, na = _counted(pipe, lambda: run_pipeline(pipe, S))
    _counted(pipe, lambda: run_pipeline(pipe, S, seed=3))
    b, nb = _counted(pipe, lambda: run_pipeline(pipe, S))
    assert torch.equal(a, b) and na == nb
    expected = cfg.expected_block_forwards(N, S)
    if settings.get("policy") == "dynamic":
        assert expected == "dynamic" and N <= na < n
    else:
        assert na == expected == S * (cfg.Fn_compute_blocks + cfg.Bn_compute_blocks) + 3 * (N - 1 - cfg.Bn_compute_blocks)
    remove(pipe)
    assert get_peer(model) is None
    c, nc = _counted(pipe, lambda: run_pipeline(pipe, S))
    assert torch.equal(c, base) and nc == n
    assert list(model.transformer_blocks) == blocks
    assert set(model.__dict__) - {"_modules"} == set(before)  # nothing of cache-dit's left on the transformer
    assert list(model.state_dict()) == keys  # cache-dit's DiT patch adds `_norm1_emb`: removed again


def test_static_mask_spreads_compute_steps_and_validates():
    cfg = peer_config("dbcache", {"compute_steps": 6})
    assert [j for j, on in enumerate(cfg.steps_mask(10)) if on] == [0, 2, 4, 5, 7, 9]  # evenly, first and last
    assert cfg.expected_block_forwards(14, 10) == 10 + 6 * 13
    assert peer_config("dbcache", {"compute_steps": 11}).expected_block_forwards(14, 20) == 163  # the toy's Table 1 cache
    with pytest.raises(ILFConfigError, match="Fn_compute_blocks"):
        peer_config("dbcache", {"compute_steps": 3, "Fn_compute_blocks": 10, "Bn_compute_blocks": 4}).validate(14, 10)
    with pytest.raises(ILFConfigError, match=r"dbcache\.mask"):
        peer_config("dbcache", {"mask": [1, 0, 1]}).validate(14, 10)
