"""GPU smoke: the real architectures, random weights, half precision, every method, through the stock
pipelines; one training step; the compiled pipeline. Prints `PASS name` / `FAIL name: reason` per case.

    python3 benchmarks/gpu_smoke.py --device cuda --out results/bench/gpu     # PixArt-alpha 1024, DiT-XL/2 256
    python3 benchmarks/gpu_smoke.py --cpu --out /tmp/smoke                     # tiny configs, a few seconds

Nothing is downloaded: transformers are built from `ilf.registry` configs on the device, the VAE is a small
random AutoencoderKL (factor 8), captions are random embeddings. Exit status 1 if any case failed.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

import ilf
from ilf import CacheConfig, FeedbackConfig
from ilf.registry import dpm_solver_pp, get_backbone

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BACKBONES = ("pixart-alpha-1024", "dit-xl-2-256")
TINY = dict(num_layers=4, num_attention_heads=2, attention_head_dim=8, sample_size=4)  # --cpu
TINY_PIXART = dict(caption_channels=16, cross_attention_dim=16)


def _ilf(pipe: Any) -> Any:
    model = ilf.apply_feedback(pipe, FeedbackConfig(1, 2, "outer:2", t_post="rescale"))
    with torch.no_grad():
        model.ilf_scales.fill_(0.1)
    return model


def _ilf_paper(pipe: Any) -> Any:  # the paper's loop on 28 blocks (b=8, e=19)
    return ilf.apply_feedback(pipe, FeedbackConfig())


METHODS: dict[str, Callable[[Any], Any]] = {
    "baseline": lambda pipe: pipe.transformer,
    "ilf": _ilf,
    "cache": lambda pipe: ilf.apply_cache(pipe, CacheConfig("inner", 2, 2)),
}
PAPER_METHODS: dict[str, Callable[[Any], Any]] = {  # only on the real 28-block models
    "ilf-paper": _ilf_paper,
    "cache-paper": lambda pipe: ilf.apply_cache(pipe, CacheConfig()),
}
STEPS = [4]  # the steps of a method case (set from --steps): static peer budgets are per step count


def _peer(name: str, settings: dict[str, Any]) -> Callable[[Any], Any]:
    """Attach a peer (ilf.peers: diffusers' hooks, cache-dit) to the pipeline; `ilf.remove` detaches it."""
    def attach(pipe: Any) -> Any:
        from ilf.peers import apply_peer, peer_config

        if name == "fastercache" and type(pipe).__name__ == "DiTPipeline":
            from ilf.errors import UnsupportedModelError

            try:  # refused on DiT by design (it mis-splits class_labels): the refusal is the pass condition
                apply_peer(pipe, peer_config(name, settings), num_steps=STEPS[0])
            except UnsupportedModelError:
                return pipe.transformer
            raise AssertionError("FasterCache on DiT was not refused")
        return apply_peer(pipe, peer_config(name, settings), num_steps=STEPS[0])
    return attach


PEERS: dict[str, Callable[[Any], Any]] = {
    "fbcache": _peer("fbcache", {"threshold": 0.2}),
    "dbcache-static": _peer("dbcache", {"compute_steps": 2}),
    "dbcache-dynamic-ts": _peer("dbcache", {"policy": "dynamic", "max_warmup_steps": 1, "taylorseer": True}),
    "taylorseer": _peer("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 1}),
    "pab": _peer("pab", {"spatial_skip_range": 2}),
    "fastercache": _peer("fastercache", {}),
}


class Smoke:
    def __init__(self, log: Path):
        self.log = log.open("w")
        self.failed: list[str] = []
        self.passed = 0

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def case(self, name: str, fn: Callable[[], str | None]) -> None:
        t0 = time.perf_counter()
        try:
            note = fn()
            self.passed += 1
            self.say(f"PASS {name} ({time.perf_counter() - t0:.1f}s){' ' + note if note else ''}")
        except Exception as err:  # noqa: BLE001 -- a smoke test reports every failure and goes on
            self.failed.append(name)
            self.say(f"FAIL {name} ({time.perf_counter() - t0:.1f}s): {type(err).__name__}: {err}")
            self.log.write(traceback.format_exc())


def build_pipeline(backbone: str, device: torch.device, dtype: torch.dtype, tiny: bool):
    """The stock pipeline of `backbone` around the real transformer architecture (random weights)."""
    import diffusers
    from diffusers import AutoencoderKL

    from ilf.bench.models import transformer_from_config

    spec = get_backbone(backbone)
    overrides = {}
    if tiny:
        overrides.update(TINY)
        if spec.transformer_class == "PixArtTransformer2DModel":
            overrides.update(TINY_PIXART)
    transformer = transformer_from_config(backbone, device, overrides)
    with torch.device(device):
        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            norm_num_groups=4, layers_per_block=1)
    cls = getattr(diffusers, spec.pipeline_class)
    if spec.task == "c2i":
        pipe = cls(transformer=transformer.eval(), vae=vae.eval(), scheduler=dpm_solver_pp())
    else:
        pipe = cls(tokenizer=None, text_encoder=None, vae=vae.eval(), transformer=transformer.eval(),
                   scheduler=dpm_solver_pp())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def run(pipe: Any, steps: int, tiny: bool, seed: int = 0) -> torch.Tensor:
    """One stock pipeline call with guidance; latents (PixArt) or images (DiT) as a float tensor."""
    device = pipe.transformer.device
    gen = torch.Generator(device).manual_seed(seed)
    if type(pipe).__name__ == "DiTPipeline":
        out = pipe(class_labels=[207], num_inference_steps=steps, generator=gen, guidance_scale=4.0,
                   output_type="np").images
        return torch.as_tensor(out).float()
    side = pipe.transformer.config.sample_size * 8
    dim, tokens = pipe.transformer.config.caption_channels, (6 if tiny else 120)
    emb = torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed)).to(device)
    mask = torch.ones(1, tokens, dtype=torch.long, device=device)
    out = pipe(num_inference_steps=steps, generator=gen, guidance_scale=4.5, height=side, width=side,
               output_type="latent", use_resolution_binning=False, prompt_embeds=emb, prompt_attention_mask=mask,
               negative_prompt=None, negative_prompt_embeds=torch.zeros_like(emb),
               negative_prompt_attention_mask=mask.clone()).images
    return out.float()


def method_case(pipe: Any, name: str, attach: Callable[[Any], Any], steps: int, tiny: bool) -> str:
    model = pipe.transformer
    dtype, keys = model.dtype, list(model.state_dict())
    attach(pipe)
    try:
        assert model.dtype == dtype, f"transformer.dtype changed to {model.dtype}"
        if name not in PEERS:  # a peer library may add modules while attached (cache-dit on DiT); checked after remove
            assert list(model.state_dict()) == keys, "state_dict keys changed"
        out = run(pipe, steps, tiny)
        assert torch.isfinite(out).all(), "non-finite output"
    finally:
        ilf.remove(pipe)
    assert "forward" not in model.__dict__, "remove left an instance forward"
    assert list(model.state_dict()) == keys, "state_dict keys differ after remove"
    return f"out abs mean {float(out.abs().mean()):.4g}"


def train_case(backbone: str, device: torch.device, tiny: bool) -> str:
    """One ILF training step: float32 backbone, bfloat16 autocast (as ilf.train), distillation to the bypass teacher."""
    pipe = build_pipeline(backbone, device, torch.float32, tiny)
    model = pipe.transformer
    ilf.apply_feedback(model, FeedbackConfig(1, 2) if tiny else FeedbackConfig())
    params = ilf.feedback_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-3)
    side = model.config.sample_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, side, side, generator=g).to(device)
    t = torch.tensor([999, 500], device=device)
    kw: dict[str, Any] = dict(timestep=t)
    if type(model).__name__ == "DiTTransformer2DModel":
        kw["class_labels"] = torch.tensor([1, 2], device=device)
    else:
        tokens = 6 if tiny else 120
        kw["encoder_hidden_states"] = torch.randn(2, tokens, model.config.caption_channels, generator=g).to(device)
        if model.config.sample_size == 128 and model.use_additional_conditions:
            kw["added_cond_kwargs"] = dict(resolution=torch.tensor([[1024.0, 1024.0]] * 2, device=device),
                                           aspect_ratio=torch.tensor([[1.0]] * 2, device=device))
        else:
            kw["added_cond_kwargs"] = dict(resolution=None, aspect_ratio=None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    with autocast:
        with torch.no_grad(), ilf.bypass(model):
            teacher = model(x, **kw).sample
        student = model(x, **kw).sample
        loss = torch.nn.functional.mse_loss(student.float(), (teacher.float() + 0.01))
    loss.backward()
    grads = [p.grad for p in params]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), "missing or non-finite gradients"
    before = params[-1].detach().clone()
    opt.step()
    assert not torch.equal(before, params[-1]), "the scales did not change"
    assert params[-1].dtype == torch.float32
    ilf.remove(model)
    return f"loss {float(loss):.4g}"


def compile_case(backbone: str, device: torch.device, dtype: torch.dtype, method: str, steps: int, tiny: bool,
                 backend: str) -> str:
    """`pipe.transformer = torch.compile(pipe.transformer)` with a method attached: no graph break, <= 2 graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe = build_pipeline(backbone, device, dtype, tiny)
    METHODS[method](pipe)
    eager = run(pipe, steps, tiny)
    pipe.transformer = torch.compile(pipe.transformer, backend=backend)
    t0 = time.perf_counter()
    first = run(pipe, steps, tiny)
    t1 = time.perf_counter()
    second = run(pipe, steps, tiny)
    t2 = time.perf_counter()
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    assert breaks == 0, f"{breaks} graph breaks: {dict(counters['graph_break'])}"
    assert 1 <= graphs <= 2, f"{graphs} graphs"
    assert torch.isfinite(second).all(), "non-finite output"
    diff = float((second - eager).abs().max())
    ilf.remove(pipe)
    return (f"graphs {graphs}, breaks 0, first run {t1 - t0:.1f}s (compiling), second {t2 - t1:.2f}s, "
            f"max |compiled - eager| {diff:.3g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="tiny configs on the CPU (a fast check of this script)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --cpu")
    p.add_argument("--out", default="results/bench/gpu", help="folder for smoke.log")
    p.add_argument("--steps", type=int, default=4, help="steps per method case")
    p.add_argument("--compile-steps", type=int, default=10)
    p.add_argument("--compile-backend", default=None, help="default: inductor on cuda, eager on cpu")
    p.add_argument("--methods", default=None, help="comma-separated method cases to run (default: all)")
    p.add_argument("--no-train-compile", action="store_true", help="skip the training-step and compiled cases")
    args = p.parse_args(argv)
    STEPS[0] = args.steps
    tiny = args.cpu
    device = torch.device(args.device or ("cpu" if tiny else "cuda"))
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    smoke = Smoke(out / "smoke.log")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    import diffusers

    smoke.say(f"ilf gpu smoke on {name}: torch {torch.__version__}, diffusers {diffusers.__version__}, "
              f"{'tiny configs' if tiny else 'real architectures, random weights'}")
    t_start = time.perf_counter()
    methods = {**METHODS, **({} if tiny else PAPER_METHODS), **PEERS}
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    for backbone in BACKBONES:
        for dname, dtype in DTYPES.items():
            try:
                pipe = build_pipeline(backbone, device, dtype, tiny)
            except Exception as err:  # noqa: BLE001
                smoke.failed.append(f"{backbone} {dname} build")
                smoke.say(f"FAIL {backbone} {dname} build: {type(err).__name__}: {err}")
                continue
            for mname, attach in methods.items():
                smoke.case(f"{backbone} {dname} {mname}",
                           lambda: method_case(pipe, mname, attach, args.steps, tiny))
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for backbone in BACKBONES if not args.no_train_compile else ():
        smoke.case(f"{backbone} train-step fp32+bf16-autocast", lambda: train_case(backbone, device, tiny))
    if not args.no_train_compile:
        smoke.case(f"{BACKBONES[0]} bf16 compiled ilf",
                   lambda: compile_case(BACKBONES[0], device, torch.bfloat16, "ilf", args.compile_steps, tiny, backend))
        smoke.case(f"{BACKBONES[1]} fp16 compiled cache",
                   lambda: compile_case(BACKBONES[1], device, torch.float16, "cache", args.compile_steps, tiny, backend))
    smoke.say(f"{smoke.passed} passed, {len(smoke.failed)} failed in {time.perf_counter() - t_start:.0f}s"
              + (": " + "; ".join(smoke.failed) if smoke.failed else ""))
    return 1 if smoke.failed else 0


if __name__ == "__main__":
    sys.exit(main())
