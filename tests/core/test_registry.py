"""The paper's backbones: real architectures on the meta device, and the offline error when weights are absent."""
import pytest

from ilf import BACKBONES, FeedbackConfig, MissingAssetError, apply_feedback, feedback_parameters, load_pipeline
from ilf.registry import build_transformer

# Paper Sec. 4.1: frozen backbone and one feedback block, exact on the real configs.
EXPECTED = {
    "dit-xl-2-256": (749_826_464, 26_682_624),
    "pixart-alpha-512": (610_856_096, 21_255_552),
    "pixart-sigma-512": (610_856_096, 21_255_552),
    "pixart-sigma-1024": (610_856_096, 21_255_552),
    "pixart-alpha-1024": (611_349_152, 21_255_552),  # + the resolution/aspect-ratio embedders of alpha-1024-MS
}


@pytest.mark.parametrize("name", sorted(EXPECTED))  # the paper's 28-block backbones (FLUX.1: tests/adapters)
def test_real_config_parameter_counts(name):
    model = build_transformer(name)  # meta device: no weights, no memory
    frozen, block = EXPECTED[name]
    assert sum(p.numel() for p in model.parameters()) == frozen
    assert len(model.transformer_blocks) == 28
    apply_feedback(model, FeedbackConfig())
    trainable = sum(p.numel() for p in feedback_parameters(model) if p.requires_grad)
    assert trainable == block + 12  # one block + m = 12 scales (owned by the method, not registered)
    assert not any(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == frozen


def test_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingAssetError) as err:
        load_pipeline("pixart-alpha-512")
    msg = str(err.value)
    assert "PixArt-alpha/PixArt-XL-2-512x512" in msg
    assert "ilf prefetch --backbone pixart-alpha-512" in msg
    assert str(tmp_path / "hub") in msg and "ILF_CACHE" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="pixart-alpha-512"):
        load_pipeline("pixart-omega")
