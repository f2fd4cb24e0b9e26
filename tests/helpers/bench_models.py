"""A stand-in model builder for `ilf bench` in the tests."""
from __future__ import annotations

from tiny import tiny_dit, tiny_pixart


def tiny_builder(backbone, resolution, device, dtype):
    """Stand-in for `build_model`: a tiny 28-block model of the backbone's class (the real one is minutes on CPU)."""
    make = tiny_dit if backbone.startswith("dit") else tiny_pixart
    return make(num_layers=28, sample_size=resolution // 8).to(device, dtype).requires_grad_(False)
