"""CLIP-IQA: pyiqa's model and procedure, attribute pairs named as they say."""
from unittest import mock

import numpy as np
import pytest
import torch

from ilf.errors import MissingAssetError
from ilf.metrics.clipiqa import (ATTRIBUTE_PAIRS, CLIPIQA_METRICS, clipiqa, clipiqa_scores, load_clipiqa,
                                 stock_pairs)
from ilf.metrics.tiny import write_random_images, write_tiny_clipiqa
from tolerances import reduction_tol, tiny_block_reductions

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture

# The tiny modified-ResNet CLIP (widths 8..64 x 4, 3 x 3 convolutions up to 3 * 3 * 64 inputs, a 256-wide
# attention pool) and a 64-wide text layer over 77 tokens give the cosines; CLIP-IQA's logit scale of 100 and the
# pair softmax (slope <= 1/4), x100 for the reported score, scale a cosine error by at most 2500.
CLIPIQA_TOL = 2500 * reduction_tol([27, 72, 72, 72, 144, 288, 576, 576, 256, 256, 49,
                                    *tiny_block_reductions(64, 77, 1)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    write_tiny_clipiqa(cache, seed=0)
    net = load_clipiqa("cpu", cache_dir=cache)  # real loader: pyiqa's clip `load` on a state dict file
    paths = write_random_images(tmp_path_factory.mktemp("img"), 3, size=64, seed=3)
    return cache, net, paths


def test_prompt_pairs_are_what_the_names_say(setup):
    _, net, _ = setup
    assert stock_pairs(net)[0] == ("good image", "bad image")   # pyiqa lower-cases via CLIP's tokenizer
    assert len(stock_pairs(net)) == 5
    assert ATTRIBUTE_PAIRS["clipiqa_noisy"] == ("Noisy photo.", "Clean photo.")       # higher = noisier
    assert ATTRIBUTE_PAIRS["clipiqa_colorful"] == ("Colorful photo.", "Dull photo.")
    assert ATTRIBUTE_PAIRS["clipiqa_natural"] == ("Natural photo.", "Synthetic photo.")
    for name, (pos, neg) in ATTRIBUTE_PAIRS.items():
        assert name.split("_")[1] in pos.lower() and name.split("_")[1] not in neg.lower()


def test_scores_equal_pyiqa_forward(setup):
    import clip
    import pyiqa
    from pyiqa.utils.img_util import imread2tensor

    cache, net, paths = setup
    ours = clipiqa_scores(net, paths, CLIPIQA_METRICS, batch_size=2)
    # Stock score straight from pyiqa's public API (InferenceModel, imread2tensor) on the same CLIP.
    with mock.patch("pyiqa.archs.clipiqa_arch.load", lambda *a, **k: net.clip_model[0]):
        metric = pyiqa.create_metric("clipiqa", device="cpu")
    stock = [100 * metric(str(p)).item() for p in paths]
    np.testing.assert_allclose(ours["clipiqa_good"], stock, rtol=0, atol=CLIPIQA_TOL)
    # Each attribute = pyiqa's CLIPIQA forward with its prompt pair swapped in.
    x = torch.stack([imread2tensor(str(p), rgb=True) for p in paths])
    for name, pair in ATTRIBUTE_PAIRS.items():
        metric.net.prompt_pairs = clip.tokenize(list(pair))
        with torch.no_grad():
            ref = 100 * metric.net(x)[:, 0].numpy()
        np.testing.assert_allclose(ours[name], ref, rtol=0, atol=CLIPIQA_TOL)
    noisy = ours["clipiqa_noisy"]
    assert ((noisy > 0) & (noisy < 100)).all()
    assert not np.allclose(ours["clipiqa_good"], ours["clipiqa_noisy"])
    # the attributes' scores lie far apart, so equality to pyiqa's per attribute says something (the tiny CLIP's
    # scores of different images differ by less than CLIPIQA_TOL: that part only checks their range)
    assert np.ptp([ours[name].mean() for name in ATTRIBUTE_PAIRS]) > 100 * CLIPIQA_TOL


def test_subset_and_mixed_sizes(setup, tmp_path):
    _, net, paths = setup
    other = write_random_images(tmp_path, 1, size=96, seed=9)
    res = clipiqa([*paths[:1], *other], ["clipiqa_colorful"], device="cpu", clip_model=net.clip_model[0])
    assert set(res) == {"clipiqa_colorful"} and res["clipiqa_colorful"][1].shape == (2,)
    with pytest.raises(ValueError, match="not CLIP-IQA"):
        clipiqa_scores(net, paths, ["clip_score"])


def test_offline_error(tmp_path):
    with pytest.raises(MissingAssetError, match="clipiqa-rn50.*ilf prefetch"):
        load_clipiqa("cpu", cache_dir=tmp_path)
