"""Cost of one training iteration: distill fast vs standard (K teacher steps) vs none (paper Sec. 3.2, Fig. 11).

Builds the real block architecture of a registry backbone (random weights, no download; PixArt-alpha:
28 blocks, 1152 wide), attaches ILF (loop 8..19), and times one optimizer step (objective forward,
backward, AdamW) of each mode, interleaved in ONE run (fast, standard, none, fast, ...), median of the
repeats. Resolution and batch are reduced to fit the machine; the depth is not (use --num-layers only
for a clearly labelled reduced-depth figure). Goal: fast <= 0.3 x standard.

    python benchmarks/bench_train.py                                    # CPU: 128 px (16x16 latent), batch 1
    python benchmarks/bench_train.py --device cuda --latent-size 64 --batch 8   # GPU: 512 px
Writes results/bench/train_cost.csv and train_cost.txt (or --out DIR).
"""
from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from ilf import FeedbackConfig, apply_feedback, feedback_parameters
from ilf.io import atomic_path, write_text_atomic
from ilf.harness.provenance import provenance
from ilf.registry import get_backbone
from ilf.train.objectives import Objective

MODES = ("fast", "standard", "none")


def build(args: argparse.Namespace, device: torch.device):
    import diffusers

    spec = get_backbone(args.backbone)
    cfg = {**spec.transformer_config, "sample_size": args.latent_size}  # same blocks; the pos-embed grid is smaller
    if args.num_layers:
        cfg["num_layers"] = args.num_layers
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(diffusers, spec.transformer_class).from_config(cfg)
    return spec, model.eval()


def make_batch(spec, model, args, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c, s, b = model.config.in_channels, args.latent_size, args.batch
    batch = {"latents": torch.randn(b, c, s, s, generator=g), "noise": torch.randn(b, c, s, s, generator=g),
             "timestep": torch.randint(0, 1000, (b,), generator=g)}
    if spec.task == "t2i":
        batch["prompt_embeds"] = torch.randn(b, args.caption_tokens, model.config.caption_channels, generator=g)
        batch["prompt_attention_mask"] = torch.ones(b, args.caption_tokens, dtype=torch.long)
    else:
        batch["class_labels"] = torch.randint(0, 1000, (b,), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="pixart-alpha-512")
    p.add_argument("--latent-size", type=int, default=16, help="latent side (pixels / 8); the backbone's own is 64")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--caption-tokens", type=int, default=16)
    p.add_argument("--teacher-steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-layers", type=int, default=None, help="REDUCED depth (labelled as such); default: real depth")
    p.add_argument("--loop", default="8,19", help="inner loop b,e")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec, model = build(args, device)
    n = len(model.transformer_blocks)
    b, e = (int(x) for x in args.loop.split(","))
    if args.num_layers:  # keep the loop inside a reduced-depth model, same proportions
        b, e = b * n // 28, e * n // 28
    cfg = FeedbackConfig(loop_start=b, loop_end=e)
    apply_feedback(model, cfg)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = feedback_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-6)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).alphas_cumprod
    objectives = {m: Objective(m, model, ac, args.teacher_steps, autocast, resolution=8 * args.latent_size) for m in MODES}
    batch = make_batch(spec, model, args, device)

    def step(mode: str) -> float:
        sync(device)
        t0 = time.perf_counter()
        loss, _ = objectives[mode](batch)
        loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0

    for mode in MODES:  # warm-up round, not counted
        step(mode)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):  # interleaved, alternating order
            times[mode].append(step(mode))
            print(f"repeat {r} {mode:8s} {times[mode][-1]:.3f} s", flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    m_loop = e - b + 1
    fwd = {"none": n + m_loop + 1, "fast": 2 * n + m_loop + 1, "standard": n + m_loop + 1 + args.teacher_steps * n}
    real = args.num_layers is None
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    prov = provenance(vars(args), device)
    rows = []
    for m in MODES:
        rows.append({"mode": m, "backbone": args.backbone, "real_architecture": real, "num_layers": n, "loop": f"{b}..{e}",
                     "latent_size": args.latent_size, "tokens": (args.latent_size // model.config.patch_size) ** 2,
                     "batch": args.batch, "teacher_steps": args.teacher_steps if m == "standard" else 0,
                     "dtype": "bf16-autocast" if autocast else "float32", "repeats": args.repeats,
                     "median_s": med[m], "min_s": min(times[m]), "max_s": max(times[m]),
                     "ratio_to_standard": med[m] / med["standard"], "block_forwards_forward_pass": fwd[m],
                     "command": command, **prov})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "train_cost.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ratio = med["fast"] / med["standard"]
    label = "real architecture" if real else f"REDUCED DEPTH ({n} of 28 blocks), not the real architecture"
    text = (f"One training iteration (forward + backward + AdamW), {args.backbone} blocks, {label}\n"
            f"latent {args.latent_size}x{args.latent_size} ({rows[0]['tokens']} tokens), batch {args.batch}, "
            f"loop {b}..{e}, device {prov['device']}, {rows[0]['dtype']}, median of {args.repeats} interleaved repeats\n"
            + "".join(f"  {m:8s} {med[m]:8.3f} s   ({fwd[m]} block forwards in the forward pass)\n" for m in MODES)
            + f"fast / standard (K={args.teacher_steps}) = {ratio:.3f}   (goal <= 0.3: {'met' if ratio <= 0.3 else 'NOT met'})\n"
            f"none / standard = {med['none'] / med['standard']:.3f}\n"
            f"command: {command}\n")
    write_text_atomic(out / "train_cost.txt", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
