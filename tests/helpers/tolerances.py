"""Float tolerances derived from the computation, not from one machine's run.

Two evaluations of the same float computation that differ only in the kernels torch picks (summation order,
fused multiply-add, vector width: `ATEN_CPU_CAPABILITY=default` / `avx2` / `avx512`, another CPU, another thread
count, a compiled graph) differ by rounding alone. A sum or dot product of n terms carries a rounding error of
typical size sqrt(n) * eps relative to the magnitude of its terms (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., Secs. 2.8 and 3.1, the probabilistic bound), and independent rounding errors of the
reductions along a path add in quadrature. In half precision with float32 accumulation (CPU matmuls and SDPA)
the error is instead the storage rounding of each stored intermediate, at most eps / 2 each, again added in
quadrature. The margins cover amplification by normalisation layers and the distribution's tail; every tolerance
stays far below the differences a wrong computation makes, and the tests that use these also check that the
compared values are spread, or that the method under test moves the output by much more.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

MARGIN = 8.0  # float32 paths: over the typical rounding error
HALF_MARGIN = 2.0  # half-precision paths: the quadrature sum of eps / 2 roundings already bounds them loosely


def eps(dtype: torch.dtype = torch.float32) -> float:
    """Machine epsilon of `dtype` (float32: 1.19e-7, bfloat16: 7.8e-3, float16: 9.8e-4)."""
    return torch.finfo(dtype).eps


def reduction_tol(reductions: Iterable[int], dtype: torch.dtype = torch.float32, margin: float = MARGIN) -> float:
    """Relative tolerance between kernel choices for a path of reductions of the given lengths.

    Args:
        reductions: the length of each reduction on the path to the compared value (the inner dimension of every
            matmul, the length of every sum or mean, attention's token count), over every step of a sampling run.
        dtype: the dtype the reductions accumulate in.
        margin: the factor over the typical rounding error.

    Returns:
        `margin * eps(dtype) * sqrt(sum(n))`, to be scaled by the magnitude of the compared values.
    """
    return margin * eps(dtype) * math.sqrt(sum(reductions))


def storage_tol(roundings: int, dtype: torch.dtype, margin: float = HALF_MARGIN) -> float:
    """Relative tolerance of a half-precision run against float32: `margin * eps * sqrt(roundings)`.

    Args:
        roundings: stored intermediates on the path (per block about eight: norm, modulation, q/k/v, attention,
            projection, MLP in and out, residual), over every step and the head.
        dtype: bfloat16 or float16.
        margin: the factor over the quadrature sum.
    """
    return margin * eps(dtype) * math.sqrt(roundings)


def tiny_block_reductions(width: int, tokens: int, blocks: int, text_tokens: int = 0, steps: int = 1) -> list[int]:
    """The reductions of `steps` x `blocks` transformer blocks of `width` channels over `tokens` image tokens.

    Per block: the norm's mean and variance (width), q/k/v and output projections (width), attention scores
    (width) and weighted sums (tokens, and `text_tokens` for cross-attention), the MLP's two matmuls (width,
    4 * width).
    """
    per_block = [width] * 6 + [tokens, 4 * width] + ([width, text_tokens] if text_tokens else [])
    return per_block * blocks * steps


def tiny_pipeline_tol(blocks: int, steps: int, dtype: torch.dtype = torch.float32) -> float:
    """`reduction_tol` of a sampling run of the tests' tiny PixArt / DiT (tests/tiny.py: width 16, at most 64 image
    tokens, 6 caption tokens), with the tiny VAE's decoder (3 x 3 convolutions over 8 channels) on top."""
    return reduction_tol(tiny_block_reductions(16, 64, blocks, text_tokens=6, steps=steps) + [9 * 8] * 4, dtype)
