"""FID honesty tests: known answers against scipy/numpy and clean-fid through a custom extractor."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from ilf.errors import MissingAssetError
from ilf.metrics import fid as F
from ilf.metrics.tiny import tiny_feature_extractor, write_random_images

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture


def _direct_fd(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_gaussian(rng, d):
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_identical_is_zero_and_matches_scipy():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_gaussian(rng, 6)
    mu2, s2 = _random_gaussian(rng, 6)
    assert abs(F.frechet_distance(mu1, s1, mu1, s1)) < 1e-6
    d = F.frechet_distance(mu1, s1, mu2, s2)
    assert d > 0.1
    assert d == pytest.approx(_direct_fd(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # 5 + 1 + 1 + 4
    assert F.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx(11.0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    gen = write_random_images(root / "gen", 12, seed=1)
    write_random_images(root / "ref", 14, seed=2)
    return root, gen


def test_cleanfid_custom_extractor_equals_direct(folders):
    from cleanfid import fid as cfid
    from cleanfid.resize import build_resizer
    from PIL import Image

    root, gen = folders
    fx = tiny_feature_extractor()
    lib = cfid.compute_fid(str(root / "gen"), str(root / "ref"), mode="clean", custom_feat_extractor=fx,
                           device=torch.device("cpu"), num_workers=0, verbose=False)
    resize = build_resizer("clean")

    def feats(folder):
        arrs = [resize(np.array(Image.open(p).convert("RGB"))) for p in sorted(Path(folder).glob("*.png"))]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        return fx(x).numpy().astype(np.float64)

    f1, f2 = feats(root / "gen"), feats(root / "ref")
    direct = _direct_fd(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert lib == pytest.approx(direct, rel=1e-4)
    assert lib > 0


def test_reference_stats_pipeline_equals_compute_fid(folders, tmp_path):
    from cleanfid import fid as cfid

    root, gen = folders
    fx = tiny_feature_extractor()
    out = F.make_reference_stats("toyref_32", root / "ref", cache_dir=tmp_path, feature_extractor=fx)
    assert out.name == "toyref_32_clean_custom_na.npz" and out.parent == tmp_path / "fid_stats"
    value, n, ref = F.fid(gen, "toyref_32", cache_dir=tmp_path, feature_extractor=fx, device="cpu")
    lib = cfid.compute_fid(str(root / "gen"), str(root / "ref"), mode="clean", custom_feat_extractor=fx,
                           device=torch.device("cpu"), num_workers=0, verbose=False)
    assert (n, ref) == (12, "toyref_32_clean_custom_na")
    assert value == pytest.approx(lib, rel=1e-6)
    with pytest.raises(FileExistsError):
        F.make_reference_stats("toyref_32", root / "ref", cache_dir=tmp_path, feature_extractor=fx)


def test_missing_reference_and_inception_fail_offline(folders, tmp_path):
    _, gen = folders
    with pytest.raises(MissingAssetError, match="fid-stats:mjhq30k_1024.*ilf prefetch"):
        F.fid(gen, "mjhq30k_1024", cache_dir=tmp_path)
    with pytest.raises(MissingAssetError, match="inception-fid"):
        F.load_inception("cpu", tmp_path)


def test_center_crop_arr_shape():
    from PIL import Image

    img = Image.fromarray(np.zeros((600, 900, 3), np.uint8))
    assert F.center_crop_arr(img, 256).shape == (256, 256, 3)
