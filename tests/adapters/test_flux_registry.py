"""FLUX.1-dev and FLUX.1-schnell in the registry: the published architecture, prefetch, the offline error."""
import subprocess
import sys

import pytest

from ilf import BACKBONES, FeedbackConfig, MissingAssetError, apply_feedback, feedback_parameters, load_pipeline
from ilf.registry import build_transformer
from ilf.train.config import load_train_config

# transformer parameters of the published checkpoints (FLUX.1-dev: 11.9B; schnell has no guidance embedder)
PARAMS = {"flux1-dev": 11_901_408_320, "flux1-schnell": 11_891_178_560}
SINGLE_BLOCK = 141_591_808  # one FluxSingleTransformerBlock of width 3072


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_real_config_on_meta_device(name):
    spec = BACKBONES[name]
    model = build_transformer(name)  # meta device: no weights, no memory
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert (len(model.transformer_blocks), len(model.single_transformer_blocks), spec.num_blocks) == (19, 38, 57)
    assert model.config.guidance_embeds == (name == "flux1-dev")
    cfg = load_train_config(f"configs/train/{name.replace('-', '_')}.yaml")
    assert (cfg.feedback.loop_start, cfg.feedback.loop_end) == (round(8 * 57 / 28), round(20 * 57 / 28) - 1)
    apply_feedback(model, cfg.feedback)  # F = copy of B_40, a single-stream block; one scale per block and stream
    assert sum(p.numel() for p in feedback_parameters(model)) == SINGLE_BLOCK + 25 * 2


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_missing_weights_name_the_download(monkeypatch, tmp_path, name):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingAssetError) as err:
        load_pipeline(name)
    msg = str(err.value)
    repo = BACKBONES[name].repo_id
    assert f"ilf prefetch --backbone {name}" in msg and f"hf download {repo} --cache-dir " in msg
    assert ("gated" in msg and "hf auth login" in msg) == (name == "flux1-dev")


def test_prefetch_lists_flux():
    out = subprocess.run([sys.executable, "-m", "ilf.cli", "prefetch", "--backbone", "flux1-dev", "--backbone",
                          "flux1-schnell", "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "['flux1-dev', 'flux1-schnell']" in out.stdout
