"""save_feedback / load_feedback: safetensors + JSON, exact round trip, clear errors on mismatch or corruption."""
import json

import pytest
import torch

from ilf import CheckpointError, FeedbackConfig, ILFConfigError, apply_feedback, load_feedback, save_feedback
from ilf.attach import STATE_ATTR
from ilf.checkpoint import CONFIG_NAME, WEIGHTS_NAME, checkpoint_files
from tiny import run_pipeline, tiny_dit, tiny_pipeline, tiny_pixart


def _trained(model_fn, cfg):
    model = model_fn(num_layers=6)
    apply_feedback(model, cfg)
    with torch.no_grad():
        for p in model.ilf_feedback.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.ilf_scales.copy_(torch.linspace(0.1, 0.4, cfg.loop_size))
    return model


@pytest.mark.parametrize("model_fn", [tiny_pixart, tiny_dit])
def test_round_trip_into_fresh_model(tmp_path, model_fn):
    cfg = FeedbackConfig(1, 4, "outer:2", t_post="anneal")
    src = _trained(model_fn, cfg)
    save_feedback(src, tmp_path)
    assert (tmp_path / WEIGHTS_NAME).is_file() and (tmp_path / CONFIG_NAME).is_file()
    dst = model_fn(num_layers=6)
    load_feedback(dst, tmp_path)
    assert dst.__dict__[STATE_ATTR].config == cfg
    for (n, a), b in zip(src.ilf_feedback.state_dict().items(), dst.ilf_feedback.state_dict().values()):
        assert torch.equal(a, b), n
    assert torch.equal(src.ilf_scales, dst.ilf_scales)


def test_load_into_stock_pipeline_with_overrides(tmp_path):
    cfg = FeedbackConfig(1, 4, "all", t_post="rescale")
    save_feedback(_trained(tiny_pixart, cfg), tmp_path)
    pipe = tiny_pipeline("pixart-alpha", num_layers=6)
    load_feedback(pipe, tmp_path, config_overrides={"feedback_steps": "first:1"})
    from ilf import count_block_forwards, expected_block_forwards

    with count_block_forwards(pipe) as c:
        run_pipeline(pipe, 3)
    assert c.count == expected_block_forwards(FeedbackConfig(1, 4, "first:1"), 6, 3)


def test_mismatched_backbone_says_what_differs(tmp_path):
    save_feedback(_trained(tiny_pixart, FeedbackConfig(1, 4)), tmp_path)
    other = tiny_dit(num_layers=6)
    keys = set(other.state_dict())
    with pytest.raises(CheckpointError, match="backbone class"):
        load_feedback(other, tmp_path)
    assert set(other.state_dict()) == keys
    wider = tiny_pixart(num_layers=6, attention_head_dim=16)
    with pytest.raises(CheckpointError, match="block parameter"):
        load_feedback(wider, tmp_path)
    deeper = tiny_pixart(num_layers=8)
    with pytest.raises(CheckpointError, match="number of blocks"):
        load_feedback(deeper, tmp_path)


def test_corrupted_files(tmp_path):
    save_feedback(_trained(tiny_pixart, FeedbackConfig(1, 4)), tmp_path)
    model = tiny_pixart(num_layers=6)
    weights = tmp_path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated: no longer the file its JSON records
    with pytest.raises(CheckpointError, match="sha256"):
        load_feedback(model, tmp_path)
    assert STATE_ATTR not in model.__dict__
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_feedback(model, tmp_path)
    meta_dir = tmp_path / "bad_cfg"
    meta_dir.mkdir()
    (meta_dir / CONFIG_NAME).write_text(json.dumps({"feedback_config": {"loop_start": 3, "loop_end": 1}}))
    with pytest.raises(CheckpointError):
        load_feedback(model, meta_dir)
    with pytest.raises(CheckpointError, match="no feedback checkpoint"):
        load_feedback(model, tmp_path / "missing")


def test_single_file_path(tmp_path):
    cfg = FeedbackConfig(1, 4)
    src = _trained(tiny_dit, cfg)
    save_feedback(src, tmp_path / "fb.safetensors")
    assert (tmp_path / "fb.safetensors").is_file() and (tmp_path / "fb.json").is_file()
    dst = load_feedback(tiny_dit(num_layers=6), tmp_path / "fb.safetensors")
    assert torch.equal(dst.ilf_scales, src.ilf_scales)


def test_save_to_a_path_through_an_existing_file_names_it(tmp_path):
    """An existing file where the checkpoint directory should be: ILFConfigError naming it, nothing written."""
    model = tiny_pixart(num_layers=4)
    apply_feedback(model, FeedbackConfig(1, 2))
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a directory")
    for target in (blocker, blocker / "sub", blocker / "w.safetensors"):
        with pytest.raises(ILFConfigError, match="existing file") as err:
            save_feedback(model, target)
        assert str(blocker) in str(err.value)
    assert blocker.read_text() == "not a directory" and sorted(tmp_path.iterdir()) == [blocker]


def _flip_data_byte(weights) -> None:
    """Flip one bit of the last tensor byte (the data section follows the 8-byte length and the JSON header)."""
    data = bytearray(weights.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    assert len(data) > header_end
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("single_file", [False, True])
def test_flipped_data_byte_is_refused_naming_the_file(tmp_path, single_file):
    target = tmp_path / ("fb.safetensors" if single_file else "ckpt")
    save_feedback(_trained(tiny_pixart, FeedbackConfig(1, 4)), target)
    weights = checkpoint_files(target)[0]
    _flip_data_byte(weights)
    model = tiny_pixart(num_layers=6)
    with pytest.raises(CheckpointError, match="sha256") as err:
        load_feedback(model, target)
    assert str(weights) in str(err.value)
    assert STATE_ATTR not in model.__dict__  # the model is left untouched


def test_checkpoint_without_recorded_sha256_still_loads(tmp_path):
    """Checkpoints written before the sha256 was recorded load as before (unverified; unreadable: refused)."""
    src = _trained(tiny_pixart, FeedbackConfig(1, 4))
    save_feedback(src, tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert len(meta.pop("weights_sha256", "")) == 64
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    dst = load_feedback(tiny_pixart(num_layers=6), tmp_path)
    assert torch.equal(dst.ilf_scales, src.ilf_scales)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])  # truncated inside the header
    with pytest.raises(CheckpointError, match="cannot read") as err:
        load_feedback(tiny_pixart(num_layers=6), tmp_path)
    assert str(weights) in str(err.value)
