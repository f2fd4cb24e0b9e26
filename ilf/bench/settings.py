"""What `ilf bench` runs: `BenchSettings` (every option of the command, with its default) and the dtypes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ILFConfigError
from ..registry import get_backbone
from .rows import BenchRow, select_rows
from .speed import COMPILE_MODES, COMPILE_SCOPES, SDPA_BACKENDS, parse_list

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_RESOLUTION = 64  # px on CPU: the real 28-block architectures, a reduced image size (2 shared cores)
TIMING_SCOPE = "transformer + DPM-Solver++ scheduler loop; text encoder and VAE excluded"
BENCH_CLASSES = ("PixArtTransformer2DModel", "DiTTransformer2DModel")  # the architectures the bench builds inputs for


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
    guidance_scale: float = 4.5  # > 1: classifier-free guidance batch, as the pipelines
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
    seed: int = 0
    threads: int | None = None  # torch CPU threads
    command: str = ""
    rows_list: list[BenchRow] = field(default_factory=list, init=False)
    variants: list[tuple[str, str]] = field(default_factory=list, init=False)  # (compile scope, sdpa backend)

    def validate(self) -> "BenchSettings":
        from ..registry import BACKBONES

        if get_backbone(self.backbone).transformer_class not in BENCH_CLASSES:
            benched = sorted(n for n, s in BACKBONES.items() if s.transformer_class in BENCH_CLASSES)
            raise ILFConfigError("backbone", self.backbone, f"one of {', '.join(benched)} (the PixArt and DiT "
                                 "architectures; `ilf bench` does not build inputs for the others yet)")
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
        self.rows_list = select_rows(self.rows)
        return self

    def resolved_resolution(self) -> int:
        if self.resolution is not None:
            return self.resolution
        return get_backbone(self.backbone).resolution if torch.device(self.device).type == "cuda" else CPU_RESOLUTION
