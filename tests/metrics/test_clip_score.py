"""CLIP score: 100 x max(cos, 0), checked with constructed embeddings and a tiny open_clip model."""
import numpy as np
import pytest
import torch

from ilf.errors import ILFConfigError, MissingAssetError
from ilf.metrics.clip_score import clip_score, clip_score_from_embeddings, load_clip_model
from ilf.metrics.tiny import tiny_open_clip, write_random_images
from tolerances import reduction_tol, tiny_block_reductions

pytestmark = pytest.mark.numerics  # compares floats across code paths or with a fixture


def test_constructed_embeddings_give_0_and_100():
    e1, e2 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    assert clip_score_from_embeddings(e1, e2).item() == pytest.approx(0.0, abs=1e-6)
    assert clip_score_from_embeddings(e1, 3 * e1).item() == pytest.approx(100.0, abs=1e-4)
    assert clip_score_from_embeddings(e1, -e1).item() == 0.0  # negative cosine is clipped at 0
    half = torch.tensor([[1.0, 3 ** 0.5, 0.0]])  # 60 degrees: cos = 0.5
    assert clip_score_from_embeddings(e1, half).item() == pytest.approx(50.0, abs=1e-4)


class _StubClip(torch.nn.Module):
    """Image embedding = the image's mean colour; caption embedding chosen by the caption."""
    TEXT = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "anti-red": [-1.0, 0.0, 0.0]}

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, x):
        return x.mean(dim=(2, 3))

    def encode_text(self, tokens):
        return tokens


def test_clip_score_pipeline_with_constructed_embeddings(tmp_path):
    from PIL import Image

    paths = []
    for i, colour in enumerate([(255, 0, 0), (255, 0, 0), (255, 0, 0)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(p)
        paths.append(p)
    from torchvision.transforms.functional import to_tensor

    value, scores = clip_score(paths, ["red", "green", "anti-red"], device="cpu", batch_size=2, model=_StubClip(),
                               preprocess=to_tensor,
                               tokenizer=lambda caps: torch.tensor([_StubClip.TEXT[c] for c in caps]))
    np.testing.assert_allclose(scores, [100.0, 0.0, 0.0], atol=1e-4)
    assert value == pytest.approx(100.0 / 3, abs=1e-4)


def test_tiny_open_clip_matches_direct_cosine(tmp_path):
    model, preprocess, tokenizer = tiny_open_clip()
    paths = write_random_images(tmp_path, 3, size=40)
    caps = ["a red car", "a cute cat in the forest", "blue sky"]
    _, scores = clip_score(paths, caps, device="cpu", batch_size=2, model=model, preprocess=preprocess,
                           tokenizer=tokenizer)
    from PIL import Image

    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]))
        txt = model.encode_text(tokenizer(caps))
    cos = (img / img.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1)
    # the tiny open_clip: a 16 x 16 x 3 patch embedding, one 32-wide layer per tower over 10 / 77 tokens; x100
    tol = 100 * reduction_tol([16 * 16 * 3, *tiny_block_reductions(32, 10, 1), *tiny_block_reductions(32, 77, 1)])
    np.testing.assert_allclose(scores, 100 * cos.clamp(min=0).numpy(), atol=tol)
    assert np.ptp(scores) > 10 * tol  # the scores are spread, so equality says something


def test_offline_error_and_bad_spec(tmp_path):
    with pytest.raises(MissingAssetError, match="open_clip:ViT-L-14:openai.*ilf prefetch"):
        load_clip_model("ViT-L-14:openai", "cpu", cache_dir=tmp_path)
    with pytest.raises(ILFConfigError, match="clip_model"):
        load_clip_model("ViT-L-14", "cpu", cache_dir=tmp_path)


def test_local_weights_file_is_loaded(tmp_path):
    """`MODEL:/path/weights` goes through open_clip's real loader (tiny registered config)."""
    import json

    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "ilf-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "ilf-tiny-test.json")
    ref = open_clip.create_model("ilf-tiny-test")
    torch.save(ref.state_dict(), tmp_path / "w.bin")
    bundle = load_clip_model(f"ilf-tiny-test:{tmp_path / 'w.bin'}", "cpu")
    for (k, a), b in zip(ref.state_dict().items(), bundle.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("model_name,tag", [("PE-Core-T-16-384", "meta"), ("MobileCLIP-S1", "datacompdr")])
def test_cached_tag_keeps_its_preprocessing(tmp_path, monkeypatch, model_name, tag):
    """Weights of a tag read from the ILF hub cache get the tag's own transform (mean/std, resize mode,
    interpolation), the same as open_clip's when it loads that tag itself; the architecture is swapped
    for a tiny one of the same image size, with random weights in a fake hub snapshot."""
    import huggingface_hub
    import open_clip
    from PIL import Image

    from ilf.metrics.clip_score import _cached_weights

    image_size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    tiny = {"embed_dim": 16, "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16,
                                            "patch_size": 64},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, model_name, tiny)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = open_clip.get_pretrained_cfg(model_name, tag)["hf_hub"].rstrip("/")
    repo_dir = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("a" * 40)
    snapshot = repo_dir / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(model_name).state_dict(), snapshot / "open_clip_pytorch_model.bin")
    assert _cached_weights(model_name, tag, tmp_path) == str(snapshot / "open_clip_pytorch_model.bin")

    ours = load_clip_model(f"{model_name}:{tag}", "cpu", cache_dir=tmp_path)
    _, _, theirs = open_clip.create_model_and_transforms(model_name, pretrained=tag, cache_dir=str(tmp_path / "hf"))
    weights = str(snapshot / "open_clip_pytorch_model.bin")
    _, _, default = open_clip.create_model_and_transforms(model_name, pretrained=weights)  # a file: no tag config
    assert repr(ours.preprocess) == repr(theirs) != repr(default)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    assert torch.equal(ours.preprocess(img), theirs(img))
    assert not torch.allclose(ours.preprocess(img), default(img))


def test_two_cached_tags_differ_in_preprocessing():
    """The two tags above really differ (else the test would not tell them apart)."""
    import open_clip

    a, b = (open_clip.get_pretrained_cfg(m, t) for m, t in [("PE-Core-T-16-384", "meta"), ("MobileCLIP-S1", "datacompdr")])
    keys = ("mean", "std", "resize_mode")   # (both interpolate bilinearly; the default is bicubic)
    assert all(a[k] != b[k] for k in keys), [(k, a[k], b[k]) for k in keys]
