"""`ilf bench`: wall-clock speed of every method on the real architectures, against block forwards.

Builds PixArt-alpha or DiT-XL/2 from its config with random weights (no download), attaches each method
through the public API, and times whole sampling runs: the transformer + DPM-Solver++ loop the stock
pipeline runs (text encoder and VAE are outside the timing). Rows run interleaved in one process after
a warm-up; median, min and max of the repeats. On a CPU the image size is reduced (default 64 px); on a
GPU the paper's resolution, bf16/fp16, PyTorch SDPA attention and torch.cuda.synchronize.

  ilf bench                                    # CPU: every row, 64 px, 3 repeats
  ilf bench --rows baseline-20,ilf-t1 --repeats 5
  ilf bench --device cuda --dtype bf16         # GPU: 1024 px PixArt-alpha
  ilf bench --device cuda --backbone dit-xl-2-256 --compile none,whole --compile-mode reduce-overhead
  ilf bench --device cuda --rows baseline-20,ilf-t1 --sdpa default,flash,cudnn,efficient

Speed variants (every combination of --compile and --sdpa is timed, in order; all exact): --compile
none (eager) | regional (every block compiled) | whole (the transformer compiled); --compile-mode is
torch.compile's mode (reduce-overhead = CUDA graphs); --sdpa puts an attention backend first. The CSV
holds analytic FLOPs per image and speedups in block forwards and FLOPs (ilf/flops.py), achieved TFLOP/s and
each row's relative difference from eager; it is rewritten after every variant.
"""
from __future__ import annotations

import argparse
import shlex

ROW_NAMES = ("baseline-20", "baseline-12", "cache-t1", "cache-t4", "ilf-t1", "ilf-t4", "ilf-t3-small", "fbcache-0.05",
             "fbcache-0.2", "dbcache-static", "dbcache-static-ts", "dbcache-dynamic", "taylorseer",
             "pab")  # = ilf.bench.rows.ROWS (kept here so that `ilf --help` imports no torch)
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench.settings import BENCH_CLASSES, CPU_RESOLUTION, DTYPES, BenchSettings
    from ..bench.speed import COMPILE_MODES
    from ..registry import BACKBONES

    d = BenchSettings()  # every default is the settings' own

    p.add_argument("--backbone", default=d.backbone,
                   help="a registry backbone whose bench inputs exist (PixArt, DiT, FLUX.1, SD3.5, Qwen-Image, Wan)",
                   choices=sorted(n for n, s in BACKBONES.items() if s.transformer_class in BENCH_CLASSES))
    p.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES))
    p.add_argument("--resolution", type=int, default=d.resolution,
                   help=f"image side in px (default: the backbone's on a GPU, {CPU_RESOLUTION} on a CPU)")
    p.add_argument("--batch", type=int, default=d.batch, help="images per sampling run")
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale,
                   help="> 1 runs classifier-free guidance as the pipeline does (default: the model card's; PixArt, "
                        "DiT 4.5; FLUX.1-dev's is its embedded guidance)")
    p.add_argument("--frames", type=int, default=d.frames,
                   help="video frames, 4k + 1 (Wan; default: the backbone's 81 on a GPU, 5 on a CPU)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed rounds (median, min, max); warm-up excluded")
    p.add_argument("--rows", default=d.rows, help=f"'all' or a comma-separated subset of: {','.join(ROW_NAMES)} "
                   "(FLUX.1, SD3.5, Qwen-Image, Wan: baseline-S, baseline-S/2, cache-t1, ilf-t1, dbcache-t1 with S "
                   "the model card's steps, e.g. baseline-28,baseline-14 for FLUX.1-dev)")
    p.add_argument("--compile", nargs="?", const="none,regional", default=d.compile,
                   help="compile scopes to time, comma-separated: none | regional | whole "
                        "(bare --compile: none,regional)")
    p.add_argument("--compile-mode", default=d.compile_mode, choices=list(COMPILE_MODES),
                   help="torch.compile mode (reduce-overhead / max-autotune use CUDA graphs)")
    p.add_argument("--compile-backend", default=d.compile_backend)
    p.add_argument("--sdpa", default=d.sdpa,
                   help="SDPA backends to time, comma-separated: default | flash | cudnn | efficient | math")
    p.add_argument("--fuse-qkv", action="store_true", help="fuse each attention's Q/K/V projections (diffusers)")
    p.add_argument("--no-blocks", action="store_true",
                   help="method-overhead probe: every block an identity; prints each method's us per block slot")
    p.add_argument("--no-profile", action="store_true",
                   help="skip each row's profiled run (host ops, device kernel time): its analysis takes minutes on "
                        "runs of thousands of block forwards (Qwen-Image, Wan)")
    p.add_argument("--tiny", action="store_true",
                   help="plumbing test only: the backbone's class, 28 blocks of width 24 (not a measurement)")
    p.add_argument("--text-tokens", type=int, default=d.text_tokens, help="caption tokens (default: the backbone's 120/300)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="CSV path (default results/bench/bench-<backbone>-<device>.csv)")
    p.add_argument("--no-progress", action="store_true")


def command_line(args: argparse.Namespace) -> str:
    """The full command, every option spelled out, that reproduces this run."""
    parts = ["ilf", "bench", "--backbone", args.backbone, "--device", args.device, "--dtype", args.dtype,
             "--batch", str(args.batch), "--repeats", str(args.repeats), "--rows", args.rows, "--seed", str(args.seed)]
    for flag, value in (("--guidance-scale", args.guidance_scale), ("--frames", getattr(args, "frames", None)),
                        ("--resolution", args.resolution), ("--text-tokens", args.text_tokens),
                        ("--threads", args.threads), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    if args.compile != "none":
        parts += ["--compile", args.compile, "--compile-mode", args.compile_mode, "--compile-backend", args.compile_backend]
    if args.sdpa != "default":
        parts += ["--sdpa", args.sdpa]
    if args.fuse_qkv:
        parts += ["--fuse-qkv"]
    if args.tiny:
        parts += ["--tiny"]
    if getattr(args, "no_profile", False):
        parts += ["--no-profile"]
    if args.no_blocks:
        parts += ["--no-blocks"]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.records import format_table, write_csv
    from ..bench.run import run_bench
    from ..bench.settings import TIMING_SCOPE, BenchSettings
    from ..bench.timing import load_average
    from ..harness.provenance import device_name
    from ..registry import get_backbone

    settings = BenchSettings(backbone=args.backbone, device=args.device, dtype=args.dtype,
                             resolution=args.resolution, batch=args.batch, guidance_scale=args.guidance_scale,
                             frames=getattr(args, "frames", None),
                             repeats=args.repeats, rows=args.rows, compile=args.compile,
                             compile_mode=args.compile_mode, compile_backend=args.compile_backend, sdpa=args.sdpa,
                             fuse_qkv=args.fuse_qkv, tiny=args.tiny, no_blocks=args.no_blocks,
                             profile=not getattr(args, "no_profile", False),
                             text_tokens=args.text_tokens, seed=args.seed,
                             threads=args.threads, command=command_line(args)).validate()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    resolution = settings.resolved_resolution()
    native = get_backbone(args.backbone).resolution
    arch = "TINY width-24 stand-in, NOT a measurement" if args.tiny else "real architecture"
    print(f"ilf bench: {args.backbone} ({arch}, random weights) on {device_name(device)}, {args.dtype}")
    print(f"  timing: {TIMING_SCOPE}")
    size_note = "" if resolution == native else f" (REDUCED from the paper's {native} px)"
    video = f", {settings.resolved_frames()} frames" if get_backbone(args.backbone).task == "t2v" else ""
    print(f"  resolution {resolution} x {settings.resolved_width()} px{size_note}{video}, batch {args.batch}, "
          f"guidance {settings.resolved_guidance()}, "
          f"{args.repeats} timed rounds after 1 warm-up, interleaved")
    print(f"  load average before: {load_average()}; torch threads: {torch.get_num_threads()}")
    print(f"  command: {settings.command}")
    out = args.out or f"results/bench/bench-{args.backbone}-{device.type}.csv"

    def progress_report(records: list[dict]) -> None:  # after every variant: print it, rewrite the CSV
        last = records[-len(settings.rows_list):]
        print(f"  variant compile={last[0]['compile']} sdpa={last[0]['sdpa_backend']}: attention ops "
              f"{last[0]['attention_ops'] or '-'}")
        print(format_table(last), flush=True)
        write_csv(records, out)

    print(f"  variants (compile scope x SDPA backend): {settings.variants}, compile mode {args.compile_mode}")
    records = run_bench(settings, progress=not args.no_progress, on_variant=progress_report)
    print(f"  attention processor: {records[0]['attention']} (AttnProcessor2_0 = PyTorch SDPA); "
          f"weights {records[0]['weights_mib']:.0f} MiB; FLOPs per block forward "
          f"{records[0]['flops_per_block_forward']:.4g}")
    if len(settings.variants) > 1:
        print(format_table(records))
    if args.no_blocks:  # every block an identity: what remains is each method's own work
        from ..bench.records import method_overhead_us

        for (scope, sdpa) in settings.variants:
            recs = [r for r in records if r["compile"] == scope and r["sdpa_backend"] == sdpa]
            for row, us in method_overhead_us(recs, get_backbone(args.backbone).num_blocks).items():
                print(f"  method overhead {scope}/{sdpa} {row:14s} {us:8.2f} us per block slot beyond the plain loop")
    print(f"  load average after: {load_average()}")
    print(f"  wrote {write_csv(records, out)}")
    return 0

