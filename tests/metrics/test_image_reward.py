"""ImageReward: official package model and procedure, normalisation once, per-prompt-then-global mean."""
import numpy as np
import pytest
import torch

from ilf.errors import MissingAssetError
from ilf.metrics.common import grouped_mean
from ilf.metrics.image_reward import image_reward, image_reward_scores, image_reward_value, load_image_reward
from ilf.metrics.tiny import tiny_blip_vit, write_random_images, write_tiny_image_reward
from tolerances import reduction_tol, tiny_block_reductions

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture

# ImageReward on the tiny fixtures: BLIP's ViT (a 32 x 32 x 3 patch embedding, one 32-wide block over 50 tokens),
# one 768-wide BERT layer with cross-attention to the image tokens, then the reward MLP (768 -> 1024 -> 128 -> 64
# -> 16 -> 1) and the normalisation. Scores are O(1), so this relative tolerance is used as an absolute one too.
IMAGE_REWARD_TOL = reduction_tol([3 * 32 * 32, *tiny_block_reductions(32, 50, 1),
                                  *tiny_block_reductions(768, 35, 1, text_tokens=50), 768, 1024, 128, 64, 16])


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    write_tiny_image_reward(cache, seed=0)
    with tiny_blip_vit():
        model = load_image_reward("cpu", cache_dir=cache)  # the real loader, on tiny files
    paths = write_random_images(tmp_path_factory.mktemp("img"), 4, size=48)
    return model, paths


def test_batched_scores_equal_package_score(tiny_ir):
    model, paths = tiny_ir
    prompts = ["a red car", "a cute cat", "a red car", "old man portrait painting"]
    ours = image_reward_scores(model, paths, prompts, batch_size=3)
    ref = [model.score(p, str(x)) for p, x in zip(prompts, paths)]  # image-reward's own method
    np.testing.assert_allclose(ours, ref, rtol=IMAGE_REWARD_TOL, atol=IMAGE_REWARD_TOL)
    assert np.ptp(ours) > 100 * IMAGE_REWARD_TOL  # the scores are spread, so equality says something


def test_normalisation_applied_exactly_once(tiny_ir):
    model, paths = tiny_ir
    last = model.mlp.layers[-1]
    saved = [p.detach().clone() for p in (last.weight, last.bias)]
    try:
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(2.0)  # raw reward is exactly 2.0 for every image
        scores = image_reward_scores(model, paths[:2], ["a cat", "a dog"])
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])
    once = (2.0 - 0.16717362830052426) / 1.0333394966054072
    assert model.mean == 0.16717362830052426 and model.std == 1.0333394966054072
    np.testing.assert_allclose(scores, [once, once], rtol=1e-6)
    assert not np.isclose(scores[0], (once - model.mean) / model.std)


def test_per_prompt_then_global_mean_differs_from_flat_mean():
    scores = np.array([1.0, 1.0, 1.0, 4.0])   # prompt a: three images, prompt b: one image
    ids = ["a", "a", "a", "b"]
    assert grouped_mean(scores, ids) == pytest.approx(2.5)
    assert scores.mean() == pytest.approx(1.75)
    assert image_reward_value(scores, ids) == pytest.approx(250.0)   # x100, grouped


def test_image_reward_entry_point_uses_grouped_mean(tiny_ir):
    model, paths = tiny_ir
    value, per_image = image_reward(paths, ["a cat", "a cat", "a cat", "a dog"], ["p1", "p1", "p1", "p2"],
                                    device="cpu", model=model)
    assert value == pytest.approx(100 * grouped_mean(per_image / 100, ["p1", "p1", "p1", "p2"]))
    assert value != pytest.approx(per_image.mean())


def test_offline_error_names_item_and_command(tmp_path):
    with pytest.raises(MissingAssetError, match=r"imagereward-v1.0.*ilf prefetch --metric-assets imagereward-v1.0"):
        load_image_reward("cpu", cache_dir=tmp_path)


def _fixture_maker():
    """tests/fixtures/make_image_reward_scores.py as a module (its helpers rebuild the fixture's inputs)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "fixtures" / "make_image_reward_scores.py"
    spec = importlib.util.spec_from_file_location("make_image_reward_scores", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scores_equal_official_package_on_transformers_4(tmp_path):
    """`load_image_reward` + `image_reward_scores` on this stack give the numbers the official package
    gave on transformers 4.55.4 (fixture made by tests/fixtures/make_image_reward_scores.py), for the
    same tiny seeded weights, tokenizer vocab, images and prompts."""
    import json

    from ilf.metrics.assets import asset_location
    from ilf.metrics.image_reward import _imagereward_module, _init_tokenizer, build_image_reward

    mk = _fixture_maker()
    official = json.loads(mk.FIXTURE.read_text())
    assert official["transformers"].startswith("4.") and len(official["scores"]) == len(official["pairs"]) >= 12

    bert = mk.write_bert_dir(asset_location("bert-base-uncased", tmp_path))
    folder = asset_location("imagereward-v1.0", tmp_path)
    n_vocab = len(_init_tokenizer(bert))
    assert n_vocab == official["vocab_size"]
    (folder / "med_config.json").write_text(json.dumps(mk.med_config(n_vocab)))
    _imagereward_module("ImageReward.models.BLIP.blip_pretrain")  # imported through ilf's shims
    with mk.tiny_vit():
        made = build_image_reward(folder / "med_config.json", bert)
        mk.fill_weights(made)
        torch.save(made.state_dict(), folder / "ImageReward.pt")
        model = load_image_reward("cpu", cache_dir=tmp_path)   # the real loader, on the fixture's files
    assert mk.state_fingerprint(model) == official["state_sha256"]  # the very same weights

    tokens = model.blip.tokenizer(mk.PROMPTS, padding="max_length", truncation=True, max_length=35)
    assert tokens["input_ids"] == official["input_ids"]
    images = mk.write_images(tmp_path / "images")
    pairs = official["pairs"]
    ours = image_reward_scores(model, [images[i] for _, i in pairs], [mk.PROMPTS[p] for p, _ in pairs],
                               batch_size=4)
    # another machine, library version and batching: equal up to rounding (see IMAGE_REWARD_TOL)
    np.testing.assert_allclose(ours, official["scores"], rtol=IMAGE_REWARD_TOL, atol=IMAGE_REWARD_TOL)
    package = [model.score(mk.PROMPTS[p], str(images[i])) for p, i in pairs[:6]]  # the package's own method
    np.testing.assert_allclose(package, official["scores"][:6], rtol=IMAGE_REWARD_TOL, atol=IMAGE_REWARD_TOL)
    assert np.ptp(ours) > 1000 * IMAGE_REWARD_TOL   # the fixture's scores are spread, so equality says something
