"""Wan 2.1 T2V 1.3B / 14B in the registry: real configs on the meta device, the offline error, `ilf prefetch`,
the training configs' loop placement, and training taken for text-to-video Wan."""
from pathlib import Path

import pytest

from ilf import BACKBONES, FeedbackConfig, ILFConfigError, MissingAssetError, apply_feedback, feedback_parameters
from ilf import load_pipeline
from ilf.registry import build_transformer

ROOT = Path(__file__).resolve().parents[2]
# Published sizes "1.3B" and "14B"; the exact counts of the published transformer configs (frozen, one block).
EXPECTED = {"wan21-t2v-1.3b": (1_418_996_800, 30, 46_440_704), "wan21-t2v-14b": (14_288_491_584, 40, 351_394_304)}
CONFIGS = {"wan21-t2v-1.3b": "wan21_t2v_1_3b", "wan21-t2v-14b": "wan21_t2v_14b"}


def _placement(n: int) -> tuple[int, int]:
    """METHOD.md: the paper's loop 8..19 of 28 (the half-open [8, 20)) scaled to N blocks."""
    return round(8 * n / 28), round(20 * n / 28) - 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_config_parameter_counts(name):
    frozen, n, block = EXPECTED[name]
    model = build_transformer(name)  # meta device: no weights, no memory
    total = sum(p.numel() for p in model.parameters())
    assert total == frozen and len(model.blocks) == n == BACKBONES[name].num_blocks
    assert abs(total / {"wan21-t2v-1.3b": 1.3e9, "wan21-t2v-14b": 14e9}[name] - 1) < 0.1  # the published size
    b, e = _placement(n)
    apply_feedback(model, FeedbackConfig(b, e))
    assert sum(p.numel() for p in feedback_parameters(model)) == block + (e - b + 1)
    assert sum(p.numel() for p in model.blocks[e].parameters()) == block
    assert sum(p.numel() for p in model.parameters()) == frozen  # F and the scales are not registered


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_configs_place_the_loop_by_the_formula(name):
    from ilf.train import load_train_config

    cfg = load_train_config(ROOT / "configs" / "train" / f"{CONFIGS[name]}.yaml")
    assert cfg.backbone == name
    assert (cfg.feedback.loop_start, cfg.feedback.loop_end) == _placement(BACKBONES[name].num_blocks)
    assert (cfg.optim.lr, cfg.global_batch_size, cfg.epochs) == (1e-6, 64, 5)  # 64 clips = 2048 images in tokens


def test_training_a_video_backbone_gets_past_the_backbone_check(monkeypatch, tmp_path, capsys):
    """Text-to-video Wan trains (tests/train/test_video_training.py): without its weights, `ilf precompute` names
    the prefetch command, not a refusal."""
    import huggingface_hub.constants as c

    from ilf.cli import main
    from ilf.registry import training_refusal
    from ilf.train.backbone import load_backbone

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "ilf"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert training_refusal("wan21-t2v-1.3b") is None and training_refusal("wan21-t2v-14b") is None
    with pytest.raises(MissingAssetError, match="ilf prefetch --backbone wan21-t2v-1.3b"):
        load_backbone("wan21-t2v-1.3b")
    rc = main(["precompute", "--config", str(ROOT / "configs/train/wan21_t2v_1_3b.yaml"), "--out", str(tmp_path / "lat")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ilf precompute: error:") and "\n" not in err
    assert "ilf prefetch --backbone wan21-t2v-1.3b" in err and "not supported" not in err


def test_missing_weights_name_the_hf_download_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "ilf"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingAssetError) as err:
        load_pipeline("wan21-t2v-14b")
    msg = str(err.value)
    assert "ilf prefetch --backbone wan21-t2v-14b" in msg
    assert f"hf download Wan-AI/Wan2.1-T2V-14B-Diffusers --cache-dir {tmp_path / 'ilf'}" in msg


def test_prefetch_lists_the_download_lines(capsys, tmp_path):
    from ilf.cli import main

    main(["prefetch", "--dry-run", "--cache-dir", str(tmp_path), "--backbone", "wan21-t2v-1.3b",
          "--backbone", "wan21-t2v-14b"])
    out = capsys.readouterr().out
    for repo in ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers"):
        assert f"hf download {repo} --cache-dir {tmp_path}" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_video_specs():
    spec = BACKBONES["wan21-t2v-1.3b"]
    assert (spec.task, spec.resolution, spec.width, spec.num_frames, spec.default_steps) == ("t2v", 480, 832, 81, 50)
    assert spec.pipeline_class == "WanPipeline" and spec.sampler == "pipeline" and spec.max_sequence_length == 512
