"""Everything the paper's metrics download, and where it lives in the ILF cache (offline compute nodes).

`METRIC_ASSETS` maps an asset name to what it is, where it is stored under the cache root and how it
is fetched. `fetch_metric_assets(names, cache_dir)` downloads them (the lead wires it into
`ilf prefetch`); every loader calls `require_asset(name, cache_dir)`, which returns the local path or
raises `MissingAssetError` naming the item and the prefetch command. Nothing is downloaded at
metric time.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ilf.errors import ILFConfigError, MissingAssetError
from ilf.io import sha256_file
from ilf.io import write_json_atomic
from ilf.paths import cache_dir as default_cache_dir

PREFETCH_COMMAND = "ilf prefetch --metric-assets {name}"

# Pinned upstream sources (a commit, not a branch, so the prompt list cannot drift).
IMAGEREWARD_COMMIT = "1beb4e4de0932acbe7fc090c51208048b6269b58"
_IR_PROMPTS_URL = (f"https://raw.githubusercontent.com/THUDM/ImageReward/{IMAGEREWARD_COMMIT}/"
                   "benchmark/benchmark-prompts.json")
_RN50_URL = ("https://openaipublic.azureedge.net/clip/models/"
             "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")
_INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"

# The Imagen team's DrawBench sheet as CSV (the source HELM's DrawBench scenario reads; also on Hugging Face as the
# dataset sayakpaul/drawbench). A sheet can change: the fetch records its sha256, URL and date beside it.
DRAWBENCH_URL = ("https://docs.google.com/spreadsheets/d/1y7nAbmR4FREi6npB1u-Bo3GFdwdOPYJc617rBOxIRHY/"
                 "gviz/tq?tqx=out:csv&sheet=Sheet1")
DRAWBENCH_SIZE = 200
# torchvision's AlexNet IMAGENET1K_V1 weights, LPIPS's backbone (lpips ships only its linear layers); the file
# name carries the first 8 hex digits of its sha256, which torch.hub checks on download.
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

DEFAULT_CLIP_MODEL = "ViT-L-14:openai"   # open_clip model name : pretrained tag (CLIP score)

METRIC_ASSETS: dict[str, dict[str, Any]] = {
    "imagereward-v1.0": {
        "what": "ImageReward-v1.0 reward model weights and its BLIP/BERT config (image-reward package)",
        "where": "imagereward/ImageReward.pt, imagereward/med_config.json",
        "how": "huggingface_hub: THUDM/ImageReward files ImageReward.pt, med_config.json",
        "size": "1.7 GB",
    },
    "bert-base-uncased": {
        "what": "BERT tokenizer ImageReward builds its text encoder input with",
        "where": "imagereward/bert-base-uncased/",
        "how": "huggingface_hub: google-bert/bert-base-uncased vocab.txt, tokenizer_config.json, config.json",
        "size": "0.3 MB",
    },
    "imagereward-prompts": {
        "what": "the 100 ImageReward benchmark prompts (list of {id, prompt})",
        "where": "prompts/imagereward_benchmark_prompts.json",
        "how": f"GET {_IR_PROMPTS_URL}",
        "size": "15 kB",
    },
    "drawbench-prompts": {
        "what": "the 200 DrawBench prompts of Imagen (CSV: Prompts, Category), with a record of their source",
        "where": "prompts/drawbench.csv, prompts/drawbench.source.json (URL, date, sha256)",
        "how": f"GET {DRAWBENCH_URL}",
        "size": "20 kB",
    },
    "lpips-alexnet": {
        "what": "torchvision's AlexNet ImageNet weights, the backbone of LPIPS (net='alex'; its linear layers ship "
                "with the lpips package)",
        "where": "lpips/alexnet-owt-7be5be79.pth",
        "how": f"torchvision AlexNet_Weights.IMAGENET1K_V1 (GET {ALEXNET_URL}, sha256 prefix checked)",
        "size": "233 MB",
    },
    "open_clip:ViT-L-14:openai": {
        "what": "CLIP ViT-L/14 (OpenAI weights) for CLIP score, via open_clip_torch",
        "where": "hf/ (Hugging Face hub cache, repo timm/vit_large_patch14_clip_224.openai)",
        "how": "open_clip.pretrained.download_pretrained(get_pretrained_cfg('ViT-L-14', 'openai'))",
        "size": "0.9 GB",
    },
    "clipiqa-rn50": {
        "what": "OpenAI CLIP RN50 checkpoint pyiqa's CLIP-IQA is built on",
        "where": "clip/RN50.pt",
        "how": f"GET {_RN50_URL} (sha256 in the URL is checked)",
        "size": "244 MB",
    },
    "inception-fid": {
        "what": "the Inception-v3 TorchScript network clean-fid uses for FID features",
        "where": "fid/inception-2015-12-05.pt",
        "how": f"GET {_INCEPTION_URL}",
        "size": "92 MB",
    },
    "mjhq30k-meta": {
        "what": "MJHQ-30K metadata: image id -> {category, prompt} (prompts for CLIP score and MJHQ FID)",
        "where": "mjhq30k/meta_data.json",
        "how": "huggingface_hub: dataset playgroundai/MJHQ-30K file meta_data.json",
        "size": "9 MB",
    },
    "mjhq30k-images": {
        "what": "the 30,000 MJHQ-30K reference images (1024 px)",
        "where": "mjhq30k/images/",
        "how": "huggingface_hub: dataset playgroundai/MJHQ-30K file mjhq30k_imgs.zip, unzipped",
        "size": "4.7 GB",
    },
    "fid-stats:mjhq30k_1024": {
        "what": "clean-fid reference statistics of MJHQ-30K (all 30,000 images at 1024 px, mode clean)",
        "where": "fid_stats/mjhq30k_1024_clean_custom_na.npz",
        "how": "clean-fid make_custom_stats over mjhq30k/images/ (needs mjhq30k-images, inception-fid; GPU advised)",
        "size": "30 MB",
    },
    "fid-stats:imagenet_train_256": {
        "what": "clean-fid reference statistics of your ImageNet train folder, ADM centre crop at 256 px",
        "where": "fid_stats/imagenet_train_256_clean_custom_na.npz",
        "how": ("not downloadable (ImageNet licence): run `ilf metrics --make-fid-ref imagenet_train_256 "
                "--ref-images /path/to/ILSVRC2012/train --ref-resolution 256` on a machine with the data"),
        "size": "30 MB",
    },
}

# Which assets each metric needs (FID and CLIP entries depend on options; see assets_for_metrics).
_METRIC_NEEDS = {
    "image_reward": ["imagereward-v1.0", "bert-base-uncased", "imagereward-prompts"],
    "clip_score": ["mjhq30k-meta"],
    "clipiqa_good": ["clipiqa-rn50", "imagereward-prompts"],
    "clipiqa_noisy": ["clipiqa-rn50", "imagereward-prompts"],
    "clipiqa_colorful": ["clipiqa-rn50", "imagereward-prompts"],
    "clipiqa_natural": ["clipiqa-rn50", "imagereward-prompts"],
    "fid_mjhq": ["inception-fid", "mjhq30k-meta"],
    "fid_imagenet": ["inception-fid"],
    "lpips_ref": ["lpips-alexnet"],
}
# Prompt sets (ilf.harness.prompts) read from the cache: what `ilf prefetch --config` fetches for a row's prompts.
PROMPT_SET_ASSETS = {"imagereward-benchmark": "imagereward-prompts", "mjhq-30k": "mjhq30k-meta",
                     "drawbench": "drawbench-prompts"}
DEFAULT_FID_REFS = {"fid_mjhq": "mjhq30k_1024", "fid_imagenet": "imagenet_train_256"}


def prefetch_command(name: str) -> str:
    return PREFETCH_COMMAND.format(name=name)


def clip_asset_name(clip_model: str = DEFAULT_CLIP_MODEL) -> str:
    """Asset name of an open_clip `model:tag` spec (e.g. `open_clip:ViT-L-14:openai`)."""
    model, tag = parse_clip_model(clip_model)
    return f"open_clip:{model}:{tag}"


def parse_clip_model(spec: str) -> tuple[str, str]:
    """`"ViT-L-14:openai"` -> `("ViT-L-14", "openai")`."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ILFConfigError("clip_model", spec, "'<open_clip model>:<pretrained tag>', e.g. 'ViT-L-14:openai'")
    model, tag = spec.split(":")
    return model, tag


def assets_for_metrics(metrics: list[str], clip_model: str = DEFAULT_CLIP_MODEL,
                       fid_refs: dict[str, str] | None = None) -> list[str]:
    """The asset names `ilf prefetch` must fetch for a list of metric names (toy metrics need none)."""
    refs = {**DEFAULT_FID_REFS, **(fid_refs or {})}
    out: list[str] = []
    for m in metrics:
        if m.startswith("toy_"):
            continue
        need = list(_METRIC_NEEDS.get(m, []))
        if m == "clip_score":
            need.append(clip_asset_name(clip_model))
        if m in refs:
            need.append(f"fid-stats:{refs[m]}")
        out += [n for n in need if n not in out]
    return out


def assets_for_prompt_sets(sets: Iterable[str]) -> list[str]:
    """The asset names `ilf prefetch` must fetch for the named prompt sets (`ilf.harness.prompts`; toy and
    ImageNet-class sets need none)."""
    return sorted({PROMPT_SET_ASSETS[s] for s in sets if s in PROMPT_SET_ASSETS})


def asset_location(name: str, cache_dir: Path | None = None) -> Path:
    """Local path (file or folder) of an asset; open_clip weights resolve inside the HF cache."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fixed = {
        "imagereward-v1.0": root / "imagereward",
        "bert-base-uncased": root / "imagereward" / "bert-base-uncased",
        "imagereward-prompts": root / "prompts" / "imagereward_benchmark_prompts.json",
        "clipiqa-rn50": root / "clip" / "RN50.pt",
        "inception-fid": root / "fid" / "inception-2015-12-05.pt",
        "mjhq30k-meta": root / "mjhq30k" / "meta_data.json",
        "mjhq30k-images": root / "mjhq30k" / "images",
        "drawbench-prompts": root / "prompts" / "drawbench.csv",
        "lpips-alexnet": root / "lpips" / ALEXNET_URL.rsplit("/", 1)[1],
    }
    if name in fixed:
        return fixed[name]
    if name.startswith("fid-stats:"):
        return root / "fid_stats" / f"{name.split(':', 1)[1]}_clean_custom_na.npz"
    if name.startswith("open_clip:"):
        return root / "hf"
    raise ILFConfigError("asset", name, sorted(METRIC_ASSETS))


def _present(name: str, path: Path) -> bool:
    if name == "imagereward-v1.0":
        return (path / "ImageReward.pt").is_file() and (path / "med_config.json").is_file()
    if name == "bert-base-uncased":
        return (path / "vocab.txt").is_file()
    if name == "mjhq30k-images":
        return path.is_dir() and any(path.iterdir())
    return path.exists()


def require_asset(name: str, cache_dir: Path | None = None) -> Path:
    """The local path of `name`, or `MissingAssetError` naming it and the prefetch command."""
    path = asset_location(name, cache_dir)
    if not _present(name, path):
        what = METRIC_ASSETS.get(name, {}).get("what", name)
        raise MissingAssetError(f"{name} ({what})", str(path), prefetch_command(name))
    return path


# ------------------------------------------------------------------ fetching (needs internet)
def _download(url: str, dest: Path, sha256: str | None = None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, length=1 << 20)
    if sha256 is not None:
        got = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if got != sha256:
            tmp.unlink()
            raise ValueError(f"checksum mismatch for {url}: got {got}, expected {sha256}")
    tmp.replace(dest)


def _fetch_one(name: str, root: Path) -> None:
    from huggingface_hub import hf_hub_download

    path = asset_location(name, root)
    if name == "imagereward-v1.0":
        for fn in ("ImageReward.pt", "med_config.json"):
            hf_hub_download("THUDM/ImageReward", fn, local_dir=path)
    elif name == "bert-base-uncased":
        for fn in ("vocab.txt", "tokenizer_config.json", "config.json"):
            hf_hub_download("google-bert/bert-base-uncased", fn, local_dir=path)
    elif name == "imagereward-prompts":
        _download(_IR_PROMPTS_URL, path)
        prompts = json.loads(path.read_text())
        if len(prompts) != 100 or not all({"id", "prompt"} <= set(p) for p in prompts):
            raise ValueError(f"{path} is not the 100-prompt ImageReward benchmark list")
    elif name == "drawbench-prompts":
        _download(DRAWBENCH_URL, path)
        from ilf.metrics.prompts import drawbench_prompts

        n = len(drawbench_prompts(root))
        if n != DRAWBENCH_SIZE:
            path.unlink()
            raise ValueError(f"{DRAWBENCH_URL} gave {n} prompts, not DrawBench's {DRAWBENCH_SIZE}")
        source = {"url": DRAWBENCH_URL, "sha256": sha256_file(path), "prompts": n,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(path.with_suffix(".source.json"), source)
    elif name == "lpips-alexnet":
        from torch.hub import load_state_dict_from_url

        load_state_dict_from_url(ALEXNET_URL, model_dir=str(path.parent), check_hash=True, map_location="cpu")
    elif name == "clipiqa-rn50":
        _download(_RN50_URL, path, sha256=_RN50_URL.split("/")[-2])
    elif name == "inception-fid":
        _download(_INCEPTION_URL, path)
    elif name == "mjhq30k-meta":
        hf_hub_download("playgroundai/MJHQ-30K", "meta_data.json", repo_type="dataset", local_dir=path.parent)
    elif name == "mjhq30k-images":
        zpath = hf_hub_download("playgroundai/MJHQ-30K", "mjhq30k_imgs.zip", repo_type="dataset",
                                local_dir=path.parent)
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(path)
    elif name.startswith("open_clip:"):
        import open_clip
        from open_clip.pretrained import download_pretrained

        _, model, tag = name.split(":")
        download_pretrained(open_clip.get_pretrained_cfg(model, tag), cache_dir=str(path))
    elif name == "fid-stats:mjhq30k_1024":
        from ilf.metrics.fid import make_reference_stats

        make_reference_stats("mjhq30k_1024", require_asset("mjhq30k-images", root), cache_dir=root)
    elif name.startswith("fid-stats:"):
        how = METRIC_ASSETS.get(name, {}).get("how", "make it with `ilf metrics --make-fid-ref NAME --ref-images DIR`")
        raise ValueError(f"{name} cannot be downloaded: {how}")
    else:
        raise ILFConfigError("asset", name, sorted(METRIC_ASSETS))


def user_made(name: str) -> bool:
    """Whether an asset cannot be downloaded and is made by the user (FID statistics of a licensed data set)."""
    return name.startswith("fid-stats:") and name != "fid-stats:mjhq30k_1024"


def fetch_metric_assets(names: list[str], cache_dir: Path) -> None:
    """Download the named assets into `cache_dir` (skips those already there); needs internet.

    Args:
        names: asset names (`assets_for_metrics`, `--metric-assets`).
        cache_dir: the ILF cache.

    Raises:
        ValueError: after every downloadable asset is fetched, when one the user makes (`user_made`) is missing;
            the message says how to make it.
    """
    root = Path(cache_dir)
    order = sorted(names, key=lambda n: n.startswith("fid-stats:"))  # images/Inception before stats
    for extra in ("mjhq30k-images", "inception-fid"):
        if "fid-stats:mjhq30k_1024" in names and extra not in order:
            order.insert(0, extra)
    missing = [n for n in order if user_made(n) and not _present(n, asset_location(n, root))]
    for name in order:
        if not user_made(name) and (name.startswith("open_clip:") or not _present(name, asset_location(name, root))):
            print(f"[prefetch] {name}: {METRIC_ASSETS.get(name, {}).get('what', name)}")
            _fetch_one(name, root)
    if missing:  # the rest is fetched: one line on what is left to the user
        how = {n: METRIC_ASSETS.get(n, {}).get("how", "make it with `ilf metrics --make-fid-ref NAME --ref-images DIR`")
               for n in missing}
        raise ValueError("; ".join(f"{n} cannot be downloaded: {how[n]}" for n in missing))
