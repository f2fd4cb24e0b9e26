"""diffusers' cache hooks as peers (ilf.peers): attach, reset per run, count, remove exactly, on PixArt and DiT."""
import subprocess
import sys

import pytest
import torch

from ilf import AlreadyAttachedError, FeedbackConfig, apply_feedback, count_block_forwards, remove
from ilf.errors import ILFConfigError, UnsupportedModelError
from ilf.peers import PEERS, apply_peer, calibrate_magcache, config_class, get_peer, peer_config, remove_peer, reset_peer
from ilf.harness.workflow_config import REPO_ROOT
from tiny import run_pipeline, tiny_pipeline

N, S = 6, 8  # tiny depth, steps
HOOKS = {  # diffusers peers with settings that skip something on the tiny models
    "fbcache": {"threshold": 0.2},
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 2},
    "pab": {"spatial_skip_range": 2, "timestep_skip_range": [-1, 1001]},
    "fastercache": {"spatial_timestep_skip_range": [-1, 1001], "unconditional_batch_timestep_skip_range": [-1, 1001]},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _counted(pipe, steps=S, seed=0):
    with count_block_forwards(pipe) as c:
        out = torch.as_tensor(run_pipeline(pipe, steps, seed=seed))
    return out, c.count


def _module_state(model):
    return {name: sorted(m.__dict__) for name, m in model.named_modules()}


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
@pytest.mark.parametrize("name", sorted(HOOKS) + ["magcache"])
def test_attach_reset_count_remove(kind, name):
    if kind == "dit" and name == "fastercache":
        pytest.skip("FasterCache is refused on DiT (test_fastercache_is_refused_on_dit)")
    pipe = tiny_pipeline(kind, num_layers=N)
    before = _module_state(pipe.transformer)
    base, n = _counted(pipe)
    settings = dict(HOOKS.get(name, {"threshold": 0.5}))
    if name == "magcache":
        settings["mag_ratios"] = calibrate_magcache(pipe, lambda: run_pipeline(pipe, S), S)
        assert len(settings["mag_ratios"]) == S and settings["mag_ratios"][0] == 1.0
        assert _module_state(pipe.transformer) == before  # calibration leaves nothing behind
    cfg = peer_config(name, settings)
    apply_peer(pipe, cfg, num_steps=S)
    assert get_peer(pipe.transformer).name == name
    a, na = _counted(pipe)
    _counted(pipe, seed=5)  # another image in between: per-run state must not leak into the next run
    b, nb = _counted(pipe)
    assert torch.equal(a, b) and na == nb  # reset at every run start
    expected = cfg.expected_block_forwards(N, S)
    if expected == "dynamic":
        assert N <= na < n  # something was skipped, something ran
    else:
        assert na == expected
    assert not torch.equal(a, base)  # the method changed the sample
    assert get_peer(pipe.transformer).info["runtime"].runs == 3
    remove(pipe)  # ilf.remove reaches remove_peer
    assert get_peer(pipe.transformer) is None
    c, nc = _counted(pipe)
    assert torch.equal(c, base) and nc == n
    assert _module_state(pipe.transformer) == before  # no hook registry or instance forward left behind


def test_counter_counts_only_blocks_that_compute():
    """FirstBlockCache with a huge threshold: step 0 runs every block, later steps only block 0."""
    pipe = tiny_pipeline("pixart-alpha", num_layers=N)
    apply_peer(pipe, peer_config("fbcache", {"threshold": 1e9}))
    with count_block_forwards(pipe) as c:
        run_pipeline(pipe, S)
    assert c.count == N + (S - 1)
    assert c.per_block["transformer_blocks.0"] == S and c.per_block["transformer_blocks.1"] == 1


def test_taylorseer_compute_steps_follow_diffusers_rule():
    cfg = peer_config("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 2})
    assert cfg.compute_steps(10) == [0, 1, 3, 5, 7, 9]
    assert cfg.expected_block_forwards(14, 10) == 84
    sub = peer_config("taylorseer", {"modules": [r"transformer_blocks\.\d+\.attn1"]})
    assert sub.expected_block_forwards(14, 10) == 140  # sub-block modules: every block still runs


def test_fastercache_is_refused_on_dit():
    pipe = tiny_pipeline("dit", num_layers=N)
    with pytest.raises(UnsupportedModelError, match=r"class_labels.*\[uncond, cond\]"):
        apply_peer(pipe, peer_config("fastercache"))
    assert get_peer(pipe.transformer) is None


def test_bare_transformer_needs_a_scheduler_or_reset_peer():
    pipe = tiny_pipeline("pixart-alpha", num_layers=N)
    apply_peer(pipe.transformer, peer_config("fbcache", {"threshold": 0.2}))  # no pipeline: no run detection
    a, _ = _counted(pipe)
    reset_peer(pipe.transformer)
    b, _ = _counted(pipe)
    assert torch.equal(a, b)
    remove_peer(pipe)
    apply_peer(pipe.transformer, peer_config("fbcache", {"threshold": 0.2}), scheduler=pipe.scheduler)
    c, _ = _counted(pipe)
    d, _ = _counted(pipe)
    assert torch.equal(c, d) and torch.equal(a, c)


def test_magcache_needs_ratios_and_the_pipelines_step_count():
    pipe = tiny_pipeline("dit", num_layers=N)
    with pytest.raises(ILFConfigError, match="calibrate_magcache"):
        apply_peer(pipe, peer_config("magcache"), num_steps=S)
    assert get_peer(pipe.transformer) is None
    with pytest.raises(ILFConfigError, match="num_inference_steps"):
        peer_config("magcache", {"num_inference_steps": 10}).validate(N, S)
    apply_peer(pipe, peer_config("magcache", {"mag_ratios": [1.0] * S, "num_inference_steps": S}))
    with pytest.raises(ILFConfigError, match=rf"magcache\.num_inference_steps={S} .* it has {S + 2} steps"):
        run_pipeline(pipe, S + 2)
    remove_peer(pipe)


def test_one_method_at_a_time():
    pipe = tiny_pipeline("dit", num_layers=N)
    apply_peer(pipe, peer_config("pab"))
    with pytest.raises(AlreadyAttachedError):
        apply_peer(pipe, peer_config("fbcache"))
    with pytest.raises(AlreadyAttachedError, match="pab"):
        apply_feedback(pipe, FeedbackConfig(1, 3, "all"))
    remove(pipe)
    apply_feedback(pipe, FeedbackConfig(1, 3, "all"))
    with pytest.raises(AlreadyAttachedError):
        apply_peer(pipe, peer_config("fbcache"))
    remove(pipe)


def test_a_peer_is_the_models_one_record_and_remove_takes_it_off():
    from ilf.attach import STATE_ATTR, get_attachment

    pipe = tiny_pipeline("dit", num_layers=N)
    model = pipe.transformer
    state = apply_peer(pipe, peer_config("pab"))
    assert model.__dict__[STATE_ATTR] is state and get_peer(model) is state  # the record ILF and the cache use
    assert get_attachment(pipe) is None  # which holds no ILF / cache state
    remove(pipe)
    assert STATE_ATTR not in model.__dict__ and get_peer(model) is None


@pytest.mark.parametrize("name", sorted(PEERS))
def test_config_round_trip(name):
    cls = config_class(name)
    cfg = cls.from_dict({"compute_steps": 4} if name == "dbcache" else {})  # DBCache static needs its K
    assert cls.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ILFConfigError, match=f"{name}.nope"):
        cls.from_dict({"nope": 1})


@pytest.mark.parametrize("name,settings,field", [
    ("fbcache", {"threshold": -1}, "fbcache.threshold"),
    ("magcache", {"mag_ratios": []}, "magcache.mag_ratios"),
    ("magcache", {"retention_ratio": 2}, "magcache.retention_ratio"),
    ("taylorseer", {"cache_interval": 0}, "taylorseer.cache_interval"),
    ("taylorseer", {"modules": "attn"}, "taylorseer.modules"),
    ("pab", {"spatial_skip_range": None}, "pab.spatial_skip_range"),
    ("pab", {"timestep_skip_range": [800, 100]}, "pab.timestep_skip_range"),
    ("fastercache", {"attention_weight": -0.1}, "fastercache.attention_weight"),
    ("dbcache", {"policy": "fast"}, "dbcache.policy"),
    ("dbcache", {"compute_steps": 3, "mask": [1, 0]}, "dbcache.compute_steps"),
    ("dbcache", {"mask": [1, 2]}, "dbcache.mask"),
    ("dbcache", {"policy": "dynamic", "compute_steps": 3}, "dbcache.compute_steps"),
])
def test_config_errors_name_the_field(name, settings, field):
    with pytest.raises(ILFConfigError, match=field.replace(".", r"\.")):
        peer_config(name, settings)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_declared_range_is_checked_and_names_its_field(name):
    import dataclasses

    cls = config_class(name)
    base = {"compute_steps": 4} if name == "dbcache" else {}
    checked = [f.name for f in dataclasses.fields(cls) if "check" in f.metadata]
    assert checked  # every peer has numeric or range settings
    for field in checked:
        with pytest.raises(ILFConfigError, match=rf"^{name}\.{field}='x'"):
            peer_config(name, base | {field: "x"})


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, ilf, ilf.peers; ilf.peers.PEERS; assert 'cache_dit' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_peer_configs_import_neither_torch_nor_the_libraries():
    """The workflow resolves peer rows at every Snakemake start (and in every SLURM job): importing torch and
    diffusers for that cost ~10-20 s per start."""
    code = ("import sys\nfrom ilf.harness.workflow_config import load_workflow_config\n"
            "from ilf.peers import PEERS, peer_config\nload_workflow_config('configs/paper.yaml')\n"
            "load_workflow_config('configs/toy.yaml')\n"
            "for name in PEERS: peer_config(name, {'compute_steps': 5} if name == 'dbcache' else {})\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'cache_dit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    assert out.strip() == "[]", out
