"""Block-forward accounting: the analytic formulas reproduce METHOD.md, and measured == analytic."""
import pytest

from ilf import CacheConfig, FeedbackConfig, apply_cache, apply_feedback, count_block_forwards, expected_block_forwards, remove
from tiny import run_pipeline, tiny_pipeline

# (label, config, steps, paper's printed block forwards) -- METHOD.md "Block-forward accounting"
PAPER_ROWS = [
    ("20-step baseline", None, 20, 560),
    ("12-step baseline", None, 12, 336),
    ("cache inner 18 k=3 (Table 1)", CacheConfig("inner", 18, 3), 20, 326),
    ("cache inner 18 k=2 (Table 4)", CacheConfig("inner", 18, 2), 20, 380),
    ("ILF 8..19, 10 steps, {0,1,8,9} (Table 1)", FeedbackConfig(8, 19, "outer:4"), 10, 332),
    ("ILF 8..19, 12 steps, {0,1,10,11} (Table 4)", FeedbackConfig(8, 19, "skip-inner:8"), 12, 388),
    ("ILF 0..5, 12 steps, all (Table 3)", FeedbackConfig(0, 5, "all"), 12, 420),
    ("DiT 10 steps", None, 10, 280),
    ("DiT 25 steps", None, 25, 700),
    ("DiT 50 steps", None, 50, 1400),
]


@pytest.mark.parametrize("label,config,steps,paper", PAPER_ROWS, ids=[r[0] for r in PAPER_ROWS])
def test_analytic_reproduces_paper(label, config, steps, paper):
    assert expected_block_forwards(config, 28, steps) == paper


def test_table1_schedule_spellings_agree():
    for spec in ("outer:4", "skip-inner:6", [0, 1, 8, 9]):
        assert expected_block_forwards(FeedbackConfig(8, 19, spec), 28, 10) == 332


def test_table6_cache_c14_vs_printed_440():
    # Table 6 prints 440 for c = 14 at k = 2; the formula gives 420 (440 would need c = 12): METHOD.md.
    assert expected_block_forwards(CacheConfig("inner", 14, 2), 28, 20) == 420
    assert expected_block_forwards(CacheConfig("inner", 12, 2), 28, 20) == 440


@pytest.mark.parametrize("kind", ["pixart-alpha", "dit"])
@pytest.mark.parametrize("label,config,steps,paper", [r for r in PAPER_ROWS if r[2] <= 20],
                         ids=[r[0] for r in PAPER_ROWS if r[2] <= 20])
def test_measured_equals_analytic(kind, label, config, steps, paper):
    pipe = tiny_pipeline(kind, num_layers=28)
    if isinstance(config, FeedbackConfig):
        apply_feedback(pipe, config)
    elif isinstance(config, CacheConfig):
        apply_cache(pipe, config)
    with count_block_forwards(pipe) as counter:
        run_pipeline(pipe, steps)  # classifier-free guidance on: cond/uncond batched, counted once
    assert counter.count == expected_block_forwards(config, 28, steps) == paper
    if config is not None:
        remove(pipe)


def test_counter_counts_feedback_block_and_per_block():
    pipe = tiny_pipeline("pixart-alpha", num_layers=6)
    apply_feedback(pipe, FeedbackConfig(1, 3, "first:2"))
    with count_block_forwards(pipe) as counter:
        run_pipeline(pipe, 4)
    assert counter.per_block["ilf_feedback"] == 2
    assert counter.per_block["transformer_blocks.1"] == 4 + 2  # re-run on the 2 feedback steps
    assert counter.per_block["transformer_blocks.0"] == 4
    assert counter.count == expected_block_forwards(FeedbackConfig(1, 3, "first:2"), 6, 4)


def test_counter_removes_its_hooks():
    pipe = tiny_pipeline("dit", num_layers=2)
    with count_block_forwards(pipe):
        pass
    assert all(len(b._forward_hooks) == 0 for b in pipe.transformer.transformer_blocks)


@pytest.mark.parametrize("bad", [dict(num_blocks=0), dict(num_steps=0)])
def test_analytic_rejects_bad_sizes(bad):
    kw = dict(num_blocks=28, num_steps=10) | bad
    with pytest.raises(ValueError):
        expected_block_forwards(None, **kw)


def test_calls_per_step_follows_the_pipelines_guidance_mode():
    from diffusers import PixArtAlphaPipeline, WanPipeline

    from ilf import calls_per_step
    from ilf.errors import ILFConfigError

    assert calls_per_step("WanPipeline", guidance_scale=5.0) == 2  # cond, then uncond: two calls per step
    assert calls_per_step("WanPipeline", guidance_scale=1.0) == 1
    assert calls_per_step("WanPipeline") == 2  # its default guidance_scale, 5.0
    assert calls_per_step(type("MyWan", (WanPipeline,), {})) == 2  # a subclass guides as its base
    assert calls_per_step(PixArtAlphaPipeline, guidance_scale=4.5) == 1  # cond and uncond batched in one call
    assert calls_per_step("QwenImagePipeline") == 1  # true CFG needs a negative prompt
    assert calls_per_step("QwenImagePipeline", negative_prompt=" ") == 2  # default true_cfg_scale 4.0
    assert calls_per_step("QwenImagePipeline", negative_prompt=" ", true_cfg_scale=1.0) == 1
    assert calls_per_step("FluxPipeline", negative_prompt="blurry") == 1  # default true_cfg_scale 1.0
    assert calls_per_step("FluxPipeline", negative_prompt="blurry", true_cfg_scale=3.5) == 2
    with pytest.raises(ILFConfigError, match="guidance_scale"):
        calls_per_step("WanPipeline", guidance_scale="5")


def _family_models():
    import tiny_families
    from tiny import model_inputs, tiny_dit, tiny_pixart

    for name in ("flux", "sd3", "qwenimage", "wan", "sana"):
        yield name, getattr(tiny_families, f"tiny_{name}")
    for name, build in (("pixart", tiny_pixart), ("dit", tiny_dit)):
        yield name, lambda build=build: (lambda m: (m, model_inputs(m)))(build(2))


@pytest.mark.parametrize("family,build", list(_family_models()), ids=[f for f, _ in _family_models()])
def test_a_block_whose_forward_is_replaced_is_not_counted(family, build):
    """What a diffusers cache hook does to a skipped block: its instance `forward` returns a cached output, while the
    block's `__call__` still runs. Counted per family at the block's first layer: every block once per call, then
    none once each returns its cached output (the model's output unchanged)."""
    import torch

    from ilf.adapters import named_blocks

    model, kwargs = build()
    outputs = {}
    handles = [b.register_forward_hook(lambda m, a, out, n=n: outputs.__setitem__(n, out))
               for n, b in named_blocks(model)]
    with torch.no_grad(), count_block_forwards(model) as plain:
        ref = model(**kwargs, return_dict=False)[0]
    for h in handles:
        h.remove()
    assert plain.count == len(named_blocks(model))
    for n, b in named_blocks(model):
        b.forward = lambda *a, out=outputs[n], **k: out  # an instance forward, as `HookRegistry.register_hook` sets
    with torch.no_grad(), count_block_forwards(model) as cached:
        out = model(**kwargs, return_dict=False)[0]
    assert cached.count == 0 and torch.equal(out, ref)


def test_a_block_without_a_known_first_layer_is_refused():
    from ilf import UnsupportedModelError

    pipe = tiny_pipeline("dit", num_layers=2)
    del pipe.transformer.transformer_blocks[1].norm1
    with pytest.raises(UnsupportedModelError, match=r"transformer_blocks\.1 \(BasicTransformerBlock\)"):
        with count_block_forwards(pipe):
            pass
