"""Generate the images of one workflow row and their generation record (docs/formats.md), resumable and shardable.

A row's images are an ordered list: for each prompt set, for each prompt, `images_per_prompt`
samples. Image `index` (global, `{index:06d}.png`) and its seed depend only on that list, never on
the shard count: seed = hash(base seed, prompt set, prompt id or class, sample index), so every row
draws the same starting noise for the same (prompt, sample) and rows are paired comparisons.
Work is cut into global batches of `batch_size` images; shard k of n takes a contiguous run of
whole batches, so batch composition (and hence every pixel) is the same for any n.

Per image we write the PNG atomically and flushed to the disk, then append one record (with the PNG's size
and sha256) to the shard's progress file; a killed job re-run skips every image whose record carries the
row's current `generation_signature` and whose PNG still matches its record (ilf.harness.image_records), and
makes the others again, identical to an uninterrupted run. Timing: one warm-up call first (excluded), then
per batch wall time with `torch.cuda.synchronize()` around the call on GPU; seconds_per_image = batch time /
batch size.
Block forwards are measured per pipeline call (= per image, METHOD.md) with `count_block_forwards`
and must equal `expected_block_forwards` times the transformer calls per step of the pipeline's guidance mode
(`ilf.accounting.calls_per_step`: 2 for Wan's guidance, 1 for batched guidance); a mismatch fails the job.
`flops_per_image` is analytic from the counted calls (`ilf.flops`: each counted block forward at its block's
FLOPs, plus the model calls' embeddings and head, at the tokens of the call).

A text-to-video row (backbone task "t2v", Wan) makes one clip per job instead of one image: a folder
`clips/{index:06d}/` of PNG frames and a manifest (`ilf.harness.clip_records.write_clip`, atomic), its record
naming `clip_path` with the clip's frame count and manifest sha256; `seconds_per_image`, the block forwards and
`flops_per_image` are then per clip (docs/formats.md). Resume checks every frame of a clip against its record.
"""
from __future__ import annotations

import hashlib
import inspect
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..accounting import calls_per_step
from ..adapters import model_blocks
from ..errors import ILFConfigError
from ..io import append_jsonl, read_jsonl, write_text_atomic
from .clip_records import write_clip
from .image_records import sample_problem, write_image
from .joblock import job_lock
from .prompts import load_prompt_set
from .workflow_config import generation_signature, prompt_specs, true_cfg_kwargs
from .workflow_layout import Layout

DTYPES = ("float32", "float16", "bfloat16")
CLIP_FPS = 16  # the frame rate clips are played at (Wan 2.1's, its model card), kept in the clip's manifest


@dataclass(frozen=True)
class ImageJob:
    """One image of a row: where it goes and what conditions it."""

    index: int
    prompt_set: str
    prompt_id: str
    prompt: str | None
    class_label: int | None
    sample_index: int
    seed: int


def derive_seed(base_seed: int, prompt_set: str, prompt_id: str, sample_index: int) -> int:
    """A 63-bit seed from (base seed, prompt set, prompt id or class, sample index); the row is not an input."""
    key = f"{base_seed}/{prompt_set}/{prompt_id}/{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def image_jobs(row: dict[str, Any]) -> list[ImageJob]:
    """Every image of a row in global index order."""
    jobs: list[ImageJob] = []
    for spec in prompt_specs(row):
        for item in load_prompt_set(spec["set"], spec["num_prompts"]):
            for s in range(spec["images_per_prompt"]):
                jobs.append(ImageJob(len(jobs), spec["set"], item.prompt_id, item.prompt, item.class_label, s,
                                     derive_seed(row["seed"], spec["set"], item.prompt_id, s)))
    return jobs


def shard_batches(num_images: int, batch_size: int, shard: int, num_shards: int) -> list[list[int]]:
    """The global batches (lists of indices) that shard `shard` of `num_shards` generates."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ILFConfigError("shard", shard, f"0..{num_shards - 1} for {num_shards} shards")
    if batch_size < 1:
        raise ILFConfigError("batch_size", batch_size, "an integer >= 1")
    batches = [list(range(i, min(i + batch_size, num_images))) for i in range(0, num_images, batch_size)]
    per, extra = divmod(len(batches), num_shards)
    start = shard * per + min(shard, extra)
    return batches[start:start + per + (1 if shard < extra else 0)]


# ----------------------------------------------------------------------------------- pipeline + method
def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ILFConfigError("device", device, "'cpu' or 'auto' on this machine (torch sees no CUDA device)")
    return device


def build_pipeline(row: dict[str, Any], device: str, dtype: str = "float32"):
    """The stock pipeline of the row's backbone with DPM-Solver++ (toy: shipped weights; real: registry); flow-matching
    backbones keep their own sampler (a registry `sampler` of "pipeline": FLUX.1, SD3.5, Sana, Qwen-Image, Wan;
    toy-flux: `FluxPipeline` with FLUX.1's Euler sampler)."""
    import torch

    if dtype not in DTYPES:
        raise ILFConfigError("dtype", dtype, DTYPES)
    if row["backbone"] == "toy-flux":
        from ..toy.flux import load_toy_flux_pipeline

        pipe = load_toy_flux_pipeline(device=device)
    elif row["backbone"] in ("toy-t2i", "toy-c2i"):
        from ..toy.pipelines import load_toy_pipeline

        pipe = load_toy_pipeline(row["task"], device=device)
    else:
        from ..registry import load_pipeline

        torch_dtype = getattr(torch, dtype) if device != "cpu" else torch.float32
        pipe = load_pipeline(row["backbone"], torch_dtype=torch_dtype, device=device)
    return pipe if keeps_own_sampler(row["backbone"]) else set_dpm_solver(pipe)


def set_dpm_solver(pipe):
    """Use DPM-Solver++ (`algorithm_type="dpmsolver++"`), the paper's sampler, keeping the noise schedule; a
    flow-matching pipeline (`FlowMatchEulerDiscreteScheduler`, or a scheduler on flow sigmas / flow prediction:
    Wan's UniPC) keeps its own sampler."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    sched = pipe.scheduler
    if isinstance(sched, FlowMatchEulerDiscreteScheduler) or sched.config.get("use_flow_sigmas") or \
            sched.config.get("prediction_type") == "flow_prediction":
        return pipe
    if not (isinstance(sched, DPMSolverMultistepScheduler) and sched.config.algorithm_type == "dpmsolver++"):
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(sched.config, algorithm_type="dpmsolver++")
    return pipe


def _attach_baseline(pipe, row: dict[str, Any]):
    return None


def _attach_cache(pipe, row: dict[str, Any]):
    from ..cache import apply_cache
    from ..config import CacheConfig

    cfg = CacheConfig.from_dict(row["cache"])
    apply_cache(pipe, cfg)
    return cfg


def _attach_ilf(pipe, row: dict[str, Any]):
    from ..attach import get_attachment
    from ..checkpoint import load_feedback

    fb = row["feedback"]
    ckpt = Path(fb["checkpoint"])
    if not (ckpt / "ilf_feedback.safetensors").exists():
        raise FileNotFoundError(f"rows[{row['name']}].feedback: checkpoint {ckpt} of training run {fb['training']!r} "
                                f"does not exist (train it: `snakemake train_{fb['training']}` or `ilf train`)")
    load_feedback(pipe, ckpt, config_overrides={k: fb[k] for k in ("feedback_steps", "t_post", "ratio")})
    cfg = get_attachment(pipe.transformer).config
    if (cfg.loop_start, cfg.loop_end) != (fb["loop_start"], fb["loop_end"]):
        raise ILFConfigError(f"training.{fb['training']}.loop_start/loop_end", [fb["loop_start"], fb["loop_end"]],
                             f"the loop of checkpoint {ckpt}: [{cfg.loop_start}, {cfg.loop_end}]")
    return cfg


def _attach_peer(pipe, row: dict[str, Any]):
    """A peer method (ilf.peers) from the row's `<method>: {...}` settings; MagCache is calibrated first if needed."""
    from ..peers import apply_peer, calibrate_magcache, peer_config

    cfg = peer_config(row["method"], row.get(row["method"]))
    if cfg.name == "magcache" and cfg.mag_ratios is None:  # one calibration call on the row's first image
        import torch

        with torch.inference_mode():
            cfg.mag_ratios = calibrate_magcache(pipe, lambda: _call(pipe, row, image_jobs(row)[:1]), row["steps"])
    apply_peer(pipe, cfg, num_steps=row["steps"])
    return cfg


def _peer_methods() -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    from ..peers import PEERS

    return {name: _attach_peer for name in PEERS}


# Method name -> attach function (returns the config `expected_block_forwards` understands, or None).
METHODS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "baseline": _attach_baseline,
    "cache": _attach_cache,
    "ilf": _attach_ilf,
    **_peer_methods(),  # dbcache, fbcache, magcache, taylorseer, pab, fastercache
}


def analytic_block_forwards(method_cfg: Any, num_blocks: int, steps: int) -> int | str:
    """METHOD.md's formula per image; "dynamic" for methods whose count is decided at run time."""
    from ..accounting import expected_block_forwards

    value = expected_block_forwards(method_cfg, num_blocks, steps)
    return value if isinstance(value, int) else "dynamic"


# ------------------------------------------------------------------------------------------ generation
def _call(pipe, row: dict[str, Any], jobs: list[ImageJob]) -> list[Any]:
    """One pipeline call on `jobs`: a PIL image per job, or (t2v) a clip per job (a list of PIL frames)."""
    out = pipe(**pipeline_kwargs(row, jobs, pipe))
    return out.frames if row["task"] == "t2v" else out.images


def pipeline_kwargs(row: dict[str, Any], jobs: list[ImageJob], pipe: Any = None) -> dict[str, Any]:
    """Every argument of the pipeline call on `jobs`: conditions, one generator per job, steps, guidance (true CFG
    with its negative prompt where the row has it: `true_cfg_kwargs`) and `call_kwargs` (`ilf.accounting.
    calls_per_step` reads the guidance mode from them)."""
    import torch

    kw: dict[str, Any] = dict(num_inference_steps=row["steps"], guidance_scale=row["guidance_scale"],
                              generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs], output_type="pil")
    kw.update(call_kwargs(row, pipe))
    true_cfg = true_cfg_kwargs(row)
    if true_cfg:
        if not _guidance_embeds(pipe, row):  # no distilled guidance to set (Qwen-Image warns when given one)
            kw["guidance_scale"] = None
        if "negative_prompt" in true_cfg:  # one per prompt: the uncond call's batch is the cond call's
            true_cfg["negative_prompt"] = [true_cfg["negative_prompt"]] * len(jobs)
        kw.update(true_cfg)
    if row["task"] == "c2i":
        return {"class_labels": [j.class_label for j in jobs], **kw}
    if row["backbone"] == "toy-flux":  # no text encoder in the pipeline: embeddings in, true CFG at the row's scale
        from ..toy.flux import toy_flux_prompt_kwargs

        return {**toy_flux_prompt_kwargs([j.prompt for j in jobs], row["guidance_scale"]), **kw}
    return {"prompt": [j.prompt for j in jobs], **kw}


def _guidance_embeds(pipe: Any, row: dict[str, Any]) -> bool:
    """Whether the row's transformer takes a distilled-guidance embedding (FLUX.1-dev): the pipeline's, else the
    registry's config."""
    from ..registry import BACKBONES

    config = getattr(getattr(pipe, "transformer", None), "config", None)
    if config is not None:
        return bool(getattr(config, "guidance_embeds", False))
    spec = BACKBONES.get(row["backbone"])
    return spec is not None and bool(spec.transformer_config.get("guidance_embeds"))


def call_kwargs(row: dict[str, Any], pipe: Any = None) -> dict[str, Any]:
    """Backbone-specific pipeline arguments: the toy's (no resolution binning, short captions), the row's square
    resolution (resolution binning turned off only in pipelines that have it, PixArt and Sana: FLUX's, SD3's and
    Qwen-Image's `__call__` take no such argument), or a video backbone's frame size and clip length."""
    if row["backbone"] == "toy-flux":
        from ..toy.flux import toy_flux_call_kwargs

        return toy_flux_call_kwargs()
    if row["backbone"] in ("toy-t2i", "toy-c2i"):
        from ..toy.pipelines import toy_call_kwargs

        return toy_call_kwargs(row["task"])
    if row["task"] == "t2i":
        kw: dict[str, Any] = {"height": row["resolution"], "width": row["resolution"]}
        if pipe is None or "use_resolution_binning" in inspect.signature(type(pipe).__call__).parameters:
            kw["use_resolution_binning"] = False
        return kw
    if row["task"] == "t2v":
        return {"height": row["resolution"], "width": row["width"], "num_frames": row["num_frames"]}
    return {}


def keeps_own_sampler(backbone: str) -> bool:
    """Whether a backbone samples with its pipeline's own scheduler (registry `sampler` "pipeline": the
    flow-matching ones) instead of DPM-Solver++."""
    from ..registry import BACKBONES

    spec = BACKBONES.get(backbone)
    return spec is not None and spec.sampler == "pipeline"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _done_records(row_dir: Path, signature: str, indices: set[int]) -> dict[int, dict[str, Any]]:
    """Records of finished images among `indices`: any shard file, current signature, PNG matching the record
    (the last such record of an index wins; a PNG that is missing, damaged or another file is not done)."""
    done: dict[int, dict[str, Any]] = {}
    for path in sorted((row_dir / "shards").glob("*.progress.jsonl")):
        for rec in read_jsonl(path):
            if (rec.get("generation_signature") == signature and int(rec["index"]) in indices
                    and sample_problem(row_dir, rec)[1] is None):
                done[int(rec["index"])] = rec
    return done


def true_cfg_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The true classifier-free guidance a row's pipeline calls run, for its generation records.

    Args:
        row: a resolved row.

    Returns:
        `{"true_cfg_scale", "negative_prompt"}`: the scale and the uncond call's prompt that `pipeline_kwargs` passes
        (`true_cfg_kwargs`: FluxPipeline, QwenImagePipeline; toy-flux: its `guidance_scale` with the empty caption,
        `ilf.toy.flux.toy_flux_prompt_kwargs`). `negative_prompt` is None at a scale <= 1 (no uncond call); both
        are None where the pipeline runs no true CFG.
    """
    if row["backbone"] == "toy-flux":
        from ..toy.flux import NEGATIVE_CAPTION

        scale = float(row["guidance_scale"])
        return {"true_cfg_scale": scale, "negative_prompt": NEGATIVE_CAPTION if scale > 1 else None}
    kw = true_cfg_kwargs(row)
    return {"true_cfg_scale": kw.get("true_cfg_scale"), "negative_prompt": kw.get("negative_prompt")}


def method_fields(row: dict[str, Any], method_cfg: Any) -> dict[str, Any]:
    """Flat method settings for the generation record and the row summary's columns."""
    fb, cache = row.get("feedback") or {}, row.get("cache") or {}
    return {
        "method": row["method"], "backbone": row["backbone"], "resolution": row["resolution"], "steps": row["steps"],
        "guidance_scale": row["guidance_scale"], **true_cfg_fields(row),
        "training_run": fb.get("training"), "training_iter": fb.get("iteration"),
        "loop_start": getattr(method_cfg, "loop_start", None), "loop_end": getattr(method_cfg, "loop_end", None),
        "t_post": fb.get("t_post"), "feedback_steps": fb.get("feedback_steps"), "ratio": fb.get("ratio"),
        "cache_location": cache.get("location"), "cache_num_blocks": cache.get("num_cached"),
        "cache_interval": cache.get("interval"),
    }


def generate_row(row: dict[str, Any], shard: int = 0, num_shards: int = 1, **kwargs: Any) -> Path:
    """Generate shard `shard` of `num_shards` of a resolved row; returns the shard's records file (JSONL).

    One writer per shard: `shards/shard-K-of-N.lock` names the holding job; a second job refuses to start
    while that job lives (ilf.harness.joblock.JobLockedError). Keyword arguments: see `_generate_row`."""
    lock = Path(Layout.shard_records(str(row["generation_dir"]), shard, num_shards)).with_suffix(".lock")
    with job_lock(lock):
        return _generate_row(row, shard, num_shards, **kwargs)


def _generate_row(row: dict[str, Any], shard: int = 0, num_shards: int = 1, device: str = "auto",
                  dtype: str = "float32", batch_size: int | None = None, warmup: int = 1,
                  pipeline_factory: Callable[[dict[str, Any], str], Any] | None = None, progress: bool = True) -> Path:
    import torch
    from tqdm import tqdm

    from ..accounting import count_block_forwards
    from ..config import FeedbackConfig
    from ..flops import count_model_calls, model_flops
    from .provenance import provenance

    if row["method"] not in METHODS:
        raise ILFConfigError(f"rows[{row['name']}].method", row["method"], sorted(METHODS))
    device = resolve_device(device)
    row_dir = Path(row["generation_dir"])
    out_path = Path(Layout.shard_records(str(row_dir), shard, num_shards))
    progress_path = out_path.with_name(out_path.name.replace(".jsonl", ".progress.jsonl"))
    signature = generation_signature(row)
    jobs = image_jobs(row)
    batches = shard_batches(len(jobs), batch_size or row["batch_size"], shard, num_shards)
    done = _done_records(row_dir, signature, {i for b in batches for i in b})
    todo = [b for b in batches if any(i not in done for i in b)]
    if todo:
        pipe = (pipeline_factory or (lambda r, d: build_pipeline(r, d, dtype)))(row, device)
        if not keeps_own_sampler(row["backbone"]):  # flow-matching backbones keep their own sampler
            pipe = set_dpm_solver(pipe)
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():  # inference: no dropout (e.g. DiT's label dropout)
            if isinstance(module, torch.nn.Module):
                module.eval()
        method_cfg = METHODS[row["method"]](pipe, row)
        num_blocks = len(model_blocks(pipe.transformer))
        if num_blocks != row["num_blocks"]:
            raise ILFConfigError(f"backbones.{row['backbone']}.num_blocks", row["num_blocks"],
                                 f"the loaded backbone's depth ({num_blocks})")
        analytic = analytic_block_forwards(method_cfg, num_blocks, row["steps"])
        if isinstance(analytic, int):  # per pipeline call: guidance as two transformer calls per step doubles it
            analytic *= calls_per_step(pipe, **pipeline_kwargs(row, [jobs[todo[0][0]]], pipe))
        prov = provenance(config=row, device=device)
        fields = method_fields(row, method_cfg)
        with torch.inference_mode():
            for _ in range(warmup):  # warm-up (one image): kernels, allocator, caches; excluded from timing
                _call(pipe, row, [jobs[todo[0][0]]])
            for batch in tqdm(todo, desc=f"{row['name']} shard {shard + 1}/{num_shards}", disable=not progress):
                items = [jobs[i] for i in batch]
                _sync(device)
                t0 = time.perf_counter()
                with count_block_forwards(pipe) as counter, count_model_calls(pipe) as calls:
                    images = _call(pipe, row, items)
                _sync(device)
                seconds = (time.perf_counter() - t0) / len(items)
                if isinstance(analytic, int) and counter.count != analytic:
                    raise RuntimeError(f"rows[{row['name']}]: measured {counter.count} block forwards per sample, "
                                       f"expected {analytic} from the config (METHOD.md accounting): refusing to "
                                       f"record images whose cost is not what the config says")
                flops = model_flops(pipe.transformer, calls.image_tokens, calls.text_tokens).from_counts(
                    counter.per_block, calls.calls, method_cfg if isinstance(method_cfg, FeedbackConfig) else None)
                for job, sample in zip(items, images):
                    if job.index in done:
                        continue  # finished before a restart (and still intact): never rewritten on disk
                    written = _write_sample(row_dir, row, job, sample)  # on the disk before its record
                    rec = {"row": row["name"], **asdict(job), **written,
                           "seconds_per_image": seconds, "block_forwards_measured": counter.count,
                           "block_forwards_analytic": analytic, "flops_per_image": flops,
                           "dtype": str(pipe.transformer.dtype).replace("torch.", ""), "batch_size": len(items),
                           "shard": shard, "num_shards": num_shards, "generation_signature": signature,
                           **fields, **prov}
                    append_jsonl(progress_path, rec)
                    done[job.index] = rec
    mine = [done[i] for b in batches for i in b]
    write_text_atomic(out_path, "".join(_dumps(r) for r in mine))
    return out_path


def _write_sample(row_dir: Path, row: dict[str, Any], job: ImageJob, sample: Any) -> dict[str, Any]:
    """Write one image (`images/{index:06d}.png`) or clip (`clips/{index:06d}/`), atomically; its record fields."""
    if row["task"] == "t2v":
        rel = f"clips/{job.index:06d}"
        written = write_clip(row_dir / rel, sample, job.seed, fps=CLIP_FPS)
        if written["clip_frames"] != row["num_frames"]:
            raise RuntimeError(f"rows[{row['name']}]: the pipeline returned {written['clip_frames']} frames per clip, "
                               f"the backbone's num_frames is {row['num_frames']} (Wan: 4k + 1 frames)")
        return {"clip_path": rel, **written}
    rel = f"images/{job.index:06d}.png"
    return {"image_path": rel, **write_image(row_dir / rel, sample)}


def _dumps(rec: dict[str, Any]) -> str:
    import json

    return json.dumps(rec, sort_keys=True, default=str) + "\n"


def merge_shards(row: dict[str, Any], num_shards: int) -> Path:
    """Concatenate the shard records into `<row_dir>/generation.jsonl` (checks every index is there once)."""
    row_dir = Path(row["generation_dir"])
    records: list[dict[str, Any]] = []
    for k in range(num_shards):
        path = Path(Layout.shard_records(str(row_dir), k, num_shards))
        if not path.exists():
            raise FileNotFoundError(f"shard {k} of {num_shards} of row {row['name']!r} is missing: {path}")
        records += read_jsonl(path)
    records.sort(key=lambda r: r["index"])
    want = len(image_jobs(row))
    if [r["index"] for r in records] != list(range(want)):
        raise RuntimeError(f"row {row['name']!r}: shard records do not cover indices 0..{want - 1} exactly once")
    out = row_dir / "generation.jsonl"
    write_text_atomic(out, "".join(_dumps(r) for r in records))
    return out
