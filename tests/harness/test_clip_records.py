"""write_clip: a clip is a folder of PNG frames and a manifest with its seed, written whole; checked per byte."""
import json

import numpy as np
import pytest
from PIL import Image

from ilf.harness.clip_records import CLIP_FIELDS, clip_frames, clip_problem, read_manifest, write_clip


def _video(frames=3, seed=0):
    return np.random.default_rng(seed).random((frames, 8, 12, 3)).astype(np.float32)


def test_frames_round_trip_with_seed(tmp_path):
    video = _video()
    rec = {"seed": 7, **write_clip(tmp_path / "clips/000000", video, seed=7)}
    assert set(CLIP_FIELDS) <= set(rec) and rec["clip_frames"] == 3
    manifest = read_manifest(tmp_path / "clips/000000")
    assert manifest["seed"] == 7 and manifest["fps"] == 16
    for k, path in enumerate(clip_frames(tmp_path / "clips/000000")):
        assert path.name == f"{k:04d}.png"
        frame = np.asarray(Image.open(path))
        assert frame.shape == (8, 12, 3)
        assert np.array_equal(frame, (video[k] * 255).round().astype(np.uint8))  # lossless: what the pipeline gave
    assert clip_problem(tmp_path / "clips/000000", rec) is None
    assert [p.name for p in tmp_path.joinpath("clips").iterdir()] == ["000000"]  # no temporary left


def test_pil_frames_and_replacing_a_clip_whole(tmp_path):
    target = tmp_path / "000001"
    write_clip(target, _video(4, seed=1), seed=1)
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 128)]
    rec = {"seed": 2, **write_clip(target, frames, seed=2, fps=24)}
    assert sorted(p.name for p in target.iterdir()) == ["0000.png", "0001.png", "clip.json"]  # nothing of the old
    assert read_manifest(target)["fps"] == 24
    assert clip_problem(target, rec) is None
    assert [p.name for p in tmp_path.iterdir()] == ["000001"]


def test_damage_is_named(tmp_path):
    target = tmp_path / "c"
    rec = {"seed": 3, **write_clip(target, _video(), seed=3)}
    assert clip_problem(target, {**rec, "seed": 4}) == "was drawn from seed 3, its record says 4"
    (target / "0001.png").write_bytes(b"x")
    assert clip_problem(target, rec) == "frame 0001.png does not match its sha256"
    (target / "0001.png").unlink()
    assert clip_problem(target, rec) == "frame 0001.png is missing"
    (target / "clip.json").write_text(json.dumps({"seed": 3, "fps": 16, "frames": []}))
    assert clip_problem(target, rec) == "has a manifest that does not match its record"
    assert clip_problem(tmp_path / "nowhere", rec) == "is missing"


def test_a_failed_write_leaves_the_old_clip(tmp_path, monkeypatch):
    target = tmp_path / "c"
    rec = write_clip(target, _video(), seed=0)

    class Broken:
        def save(self, fh, format):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_clip(target, [Broken()], seed=0)
    assert clip_problem(target, {"seed": 0, **rec}) is None
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_not_a_clip(tmp_path):
    with pytest.raises(ValueError, match="frames, height, width"):
        write_clip(tmp_path / "c", np.zeros((8, 8, 3)), seed=0)
    with pytest.raises(ValueError, match="at least one frame"):
        write_clip(tmp_path / "c", [], seed=0)
    assert not any(tmp_path.iterdir())


def test_a_stock_wan_pipeline_clip(tmp_path, one_thread):
    """End to end on the tiny Wan: the pipeline's `output_type="np"` video (5 frames at 32x32) as a clip."""
    from tiny_wan import run_wan, tiny_wan_pipeline

    video = run_wan(tiny_wan_pipeline(2), 2, seed=5, output_type="np")[0]
    rec = {"seed": 5, **write_clip(tmp_path / "clips/000000", video, seed=5)}
    assert rec["clip_frames"] == 5 and clip_problem(tmp_path / "clips/000000", rec) is None
    assert np.asarray(Image.open(clip_frames(tmp_path / "clips/000000")[4])).shape == (32, 32, 3)
