"""Reference metrics per clip: each frame against the same frame of the reference clip, averaged over the clip."""
import numpy as np
import pytest
import torch

from ilf.harness.clip_records import write_clip
from ilf.metrics.fidelity import clip_fidelity, psnr, ssim


def _clip(seed, frames=3):
    return (np.random.default_rng(seed).random((frames, 16, 16, 3)) * 255).round().astype(np.uint8) / 255.0


def test_per_clip_means_of_per_frame_values(tmp_path):
    ref, a, b = _clip(0), _clip(1), _clip(2)
    a[1] = ref[1]  # one frame identical: its PSNR is the 8-bit ceiling, its SSIM 1
    for name, video in (("ref", ref), ("a", a), ("b", b)):
        write_clip(tmp_path / name, video, seed=0)
    out = clip_fidelity([tmp_path / "a", tmp_path / "b", tmp_path / "ref"], [tmp_path / "ref"] * 3,
                        ["psnr_ref", "ssim_ref"])
    for k, video in enumerate((a, b)):
        x, y = (torch.from_numpy(v).permute(0, 3, 1, 2) for v in (video, ref))
        assert out["psnr_ref"][k] == pytest.approx(psnr(x, y).mean().item(), rel=1e-12)
        assert out["ssim_ref"][k] == pytest.approx(ssim(x.float(), y.float()).double().mean().item(), rel=1e-6)
    ceiling = 10 * np.log10(255.0 ** 2 * 3 * 16 * 16)
    assert out["psnr_ref"][2] == pytest.approx(ceiling) and out["ssim_ref"][2] == pytest.approx(1.0)
    assert out["psnr_ref"][1] < out["psnr_ref"][0] < ceiling  # a shares one frame with the reference


def test_frame_counts_must_match(tmp_path):
    write_clip(tmp_path / "a", _clip(0, frames=3), seed=0)
    write_clip(tmp_path / "ref", _clip(0, frames=4), seed=0)
    with pytest.raises(ValueError, match="has 3 frames and its reference clip .* 4"):
        clip_fidelity([tmp_path / "a"], [tmp_path / "ref"], ["psnr_ref"])
