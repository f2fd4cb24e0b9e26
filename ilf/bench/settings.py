"""What `ilf bench` runs: `BenchSettings` (every option of the command, with its default) and the dtypes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ILFConfigError
from ..registry import get_backbone
from .inputs import FAMILY_CLASSES, GUIDANCE, calls_per_step
from .rows import BenchRow, scaled_rows, select_rows
from .speed import COMPILE_MODES, COMPILE_SCOPES, SDPA_BACKENDS, parse_list

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_RESOLUTION = 64  # px on CPU: the real 28-block architectures, a reduced image size (2 shared cores)
TIMING_SCOPE = ("transformer + scheduler loop (DPM-Solver++; FLUX.1, SD3.5, Qwen-Image, Wan: the pipeline's own); "
                "text encoder and VAE excluded")
CPU_FRAMES = 5  # video frames on CPU (2 latent frames)
BENCH_CLASSES = ("PixArtTransformer2DModel", "DiTTransformer2DModel") + FAMILY_CLASSES  # those it builds inputs for


@dataclass
class BenchSettings:
    """What `ilf bench` runs (defaults: PixArt-alpha 1024 architecture, every row, eager, default SDPA).

    `compile` and `sdpa` are comma-separated lists; every combination (compile scope x SDPA backend) is
    one variant, timed in that order. `compile=True` means "none,regional" (eager, then regional).
    """

    backbone: str = "pixart-alpha-1024"
    device: str = "cpu"
    dtype: str = "bf16"  # fp32 | bf16 | fp16
    resolution: int | None = None  # px; None: the backbone's own on a GPU, CPU_RESOLUTION on a CPU
    batch: int = 1  # images per sampling run (the transformer sees 2x with classifier-free guidance)
    guidance_scale: float | None = None  # None: the model card's (PixArt, DiT 4.5); > 1: guidance as the pipelines
    frames: int | None = None  # video frames (Wan); None: the backbone's on a GPU, CPU_FRAMES on a CPU
    repeats: int = 3
    rows: Any = "all"
    compile: Any = "none"  # none | regional | whole, comma-separated (True: "none,regional")
    compile_mode: str = "default"  # torch.compile mode (speed.COMPILE_MODES)
    compile_backend: str = "inductor"
    sdpa: Any = "default"  # default | flash | cudnn | efficient | math, comma-separated
    fuse_qkv: bool = False  # diffusers' fuse_qkv_projections (one QKV / KV GEMM per attention)
    tiny: bool = False  # plumbing test only: the backbone's class and 28 blocks at width 24 (TINY_WIDTH)
    no_blocks: bool = False  # method-overhead probe: every block replaced by an identity (`IdentityBlock`)
    text_tokens: int | None = None  # caption tokens; None: the backbone's max_sequence_length (120 / 300)
    profile: bool = True  # one profiled run per row (host ops, device kernel time); costly on long runs
    seed: int = 0
    threads: int | None = None  # torch CPU threads
    command: str = ""
    rows_list: list[BenchRow] = field(default_factory=list, init=False)
    variants: list[tuple[str, str]] = field(default_factory=list, init=False)  # (compile scope, sdpa backend)

    def validate(self) -> "BenchSettings":
        from ..registry import BACKBONES

        spec = get_backbone(self.backbone)
        if spec.transformer_class not in BENCH_CLASSES:
            benched = sorted(n for n, s in BACKBONES.items() if s.transformer_class in BENCH_CLASSES)
            raise ILFConfigError("backbone", self.backbone, f"one of {', '.join(benched)} (`ilf bench` builds "
                                 "inputs for PixArt, DiT, FLUX.1, SD3.5, Qwen-Image and Wan)")
        if self.frames is not None and (not isinstance(self.frames, int) or self.frames < 1 or self.frames % 4 != 1):
            raise ILFConfigError("frames", self.frames, "4k + 1 video frames (the VAE's temporal factor 4), e.g. 17")
        if self.no_blocks and self.family:
            raise ILFConfigError("no_blocks", True, "off for the flow-matching families (the identity block is "
                                 "single-stream: PixArt and DiT only)")
        if self.dtype not in DTYPES:
            raise ILFConfigError("dtype", self.dtype, tuple(DTYPES))
        if self.resolution is not None and (self.resolution < 16 or self.resolution % 16):
            raise ILFConfigError("resolution", self.resolution, "a multiple of 16 px (VAE factor 8 x patch 2)")
        for name in ("batch", "repeats"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ILFConfigError(name, v, "an integer >= 1")
        if self.compile_mode not in COMPILE_MODES:
            raise ILFConfigError("compile_mode", self.compile_mode, COMPILE_MODES)
        compile_spec = {True: "none,regional", False: "none"}.get(self.compile, self.compile) \
            if isinstance(self.compile, bool) else self.compile
        scopes = parse_list(compile_spec, COMPILE_SCOPES, "compile")
        backends = parse_list(self.sdpa, SDPA_BACKENDS, "sdpa")
        self.variants = [(c, b) for c in scopes for b in backends]
        if self.family:
            calls = calls_per_step(spec, self.resolved_guidance())
            self.rows_list = select_rows(self.rows, scaled_rows(spec.num_blocks, spec.default_steps, calls))
        else:
            self.rows_list = select_rows(self.rows)
        return self

    @property
    def family(self) -> bool:
        """Whether the backbone is a flow-matching family with scaled rows and its own loop (`inputs.py`)."""
        return get_backbone(self.backbone).transformer_class in FAMILY_CLASSES

    def resolved_guidance(self) -> float:
        return self.guidance_scale if self.guidance_scale is not None else GUIDANCE.get(self.backbone, 4.5)

    def resolved_frames(self) -> int:
        spec = get_backbone(self.backbone)
        if spec.task != "t2v":
            return 1
        if self.frames is not None:
            return self.frames
        return spec.num_frames if torch.device(self.device).type == "cuda" else CPU_FRAMES

    def resolved_width(self) -> int:
        """Image / frame width in px: the backbone's aspect ratio (Wan 480p: 832 x 480) at the resolved height."""
        spec = get_backbone(self.backbone)
        height = self.resolved_resolution()
        return height if spec.width is None else max(16, round(height * spec.width / spec.resolution / 16) * 16)

    def resolved_resolution(self) -> int:
        if self.resolution is not None:
            return self.resolution
        return get_backbone(self.backbone).resolution if torch.device(self.device).type == "cuda" else CPU_RESOLUTION
