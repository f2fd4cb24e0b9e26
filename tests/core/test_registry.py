"""The paper's backbones: real architectures on the meta device, and the offline error when weights are absent."""
import pytest

from ilf import BACKBONES, FeedbackConfig, MissingAssetError, apply_feedback, feedback_parameters, load_pipeline
from ilf.registry import build_transformer

# Paper Sec. 4.1: frozen backbone and one feedback block, exact on the real configs; (frozen, block, N, (b, e)).
EXPECTED = {
    "dit-xl-2-256": (749_826_464, 26_682_624, 28, (8, 19)),
    "pixart-alpha-512": (610_856_096, 21_255_552, 28, (8, 19)),
    "pixart-sigma-512": (610_856_096, 21_255_552, 28, (8, 19)),
    "pixart-sigma-1024": (610_856_096, 21_255_552, 28, (8, 19)),
    "pixart-alpha-1024": (611_349_152, 21_255_552, 28, (8, 19)),  # + alpha-1024-MS's resolution/aspect embedders
    # the published sizes: Sana "1.6B", Qwen-Image "20B"; loops at the paper's relative depth (METHOD.md)
    "sana-1600m-1024": (1_604_462_752, 77_920_640, 20, (6, 13)),
    "qwen-image": (20_430_401_088, 339_831_296, 60, (17, 42)),
}


TESTED_IN_ADAPTERS = {"flux1-dev", "flux1-schnell", "sd35-medium", "sd35-large", "wan21-t2v-1.3b", "wan21-t2v-14b"}  # tests/adapters/


def test_every_backbone_has_expected_counts():
    assert sorted(set(EXPECTED) | TESTED_IN_ADAPTERS) == sorted(BACKBONES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_config_parameter_counts(name):
    model = build_transformer(name)  # meta device: no weights, no memory
    frozen, block, num_blocks, (b, e) = EXPECTED[name]
    assert sum(p.numel() for p in model.parameters()) == frozen
    assert len(model.transformer_blocks) == num_blocks == BACKBONES[name].num_blocks
    assert (b, e + 1) == (round(8 * num_blocks / 28), round(20 * num_blocks / 28))  # blocks 8..19 of 28, scaled
    apply_feedback(model, FeedbackConfig(b, e))
    trainable = sum(p.numel() for p in feedback_parameters(model) if p.requires_grad)
    streams = 2 if name == "qwen-image" else 1  # Qwen-Image feeds back its image and text streams
    assert trainable == block + (e - b + 1) * streams  # one block + m scales per stream (not registered)
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


@pytest.mark.parametrize("name", ["qwen-image", "sana-1600m-1024"])
def test_missing_weights_name_the_download_line(monkeypatch, tmp_path, name):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingAssetError) as err:
        load_pipeline(name)
    assert f"ilf prefetch --backbone {name}" in str(err.value)
    assert f"hf download {BACKBONES[name].repo_id} --cache-dir " in str(err.value)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="pixart-alpha-512"):
        load_pipeline("pixart-omega")


def test_prefetch_dry_run_lists_the_download_lines(capsys, tmp_path):
    from ilf.cli import main
    from ilf.registry import PREFETCH_IGNORE

    assert main(["prefetch", "--backbone", "qwen-image", "--backbone", "sana-1600m-1024", "--dry-run",
                 "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    excludes = " ".join(f"--exclude '{p}'" for p in PREFETCH_IGNORE)
    for repo in ("Qwen/Qwen-Image", "Efficient-Large-Model/Sana_1600M_1024px_diffusers"):
        assert f"hf download {repo} --cache-dir {tmp_path / 'hf'} {excludes}\n" in out
    assert not (tmp_path / "hf").exists()  # a dry run fetches nothing
