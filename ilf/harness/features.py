"""Feature change across steps and blocks, baseline vs cache (paper Figs. 3 and 4; METHOD.md).

For a fixed set of prompts (or class labels), one sampling run records, at every step s, the tensor
that every block *position* i passes on to the rest of the network, `h_i^s` (B, T, D). With forward
hooks on `transformer.transformer_blocks`:

- a block that runs is observed directly: `h_i^s` = its output (forward hook);
- a cached block on a skipped step is never called (that is what makes it cheap), so no hook on it
  fires. The cache (paper Sec. 2.2) then passes on `h_{i-1}^s + delta_i`, where `delta_i` is the
  block's residual from the last step it ran. We keep that residual ourselves from the block's own
  observed input and output (forward pre-hook + forward hook) and reconstruct `h_i^s` the same way.
  The reconstruction is *checked*: the next module that does run (a later block, or the output
  head's `norm_out`) receives its input through its pre-hook, and that observed tensor must equal the
  reconstructed one; otherwise we raise, so a cache that behaves differently is never silently drawn.
  The patch embedding's output (`pos_embed`) is the input of position 0.

Fig. 3: `D3[i, s] = mean_tokens || h_i^s - h_i^0 ||_2` (change of block i since the first step).
Fig. 4: `D4[i, s] = mean_tokens || h_i^s - h_0^s ||_2` (distance of block i from block 0 at step s).
The mean runs over tokens and over the batch (every prompt and both halves of a CFG batch); each
figure is normalised by its maximum over the baseline and cache maps. Only distances are stored (not
the raw features, which for a 1024 px model would be gigabytes): `features.safetensors` (and the same
arrays as `features.npz`) + `features.json`.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..adapters import model_blocks
from ..attach import get_attachment, remove, resolve_target
from ..cache import apply_cache
from ..config import CacheConfig
from ..io import atomic_path, write_json_atomic

DISTANCE = "mean L2 over tokens (and over the batch) of the block-output difference"


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def mean_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over batch and tokens of the L2 norm over channels of `a - b` (both (B, T, D))."""
    return float(torch.linalg.vector_norm((a.float() - b.float()), dim=-1).mean())


class FeatureRecorder:
    """Forward hooks that collect `h_i^s` for every block position i and step s of one sampling run."""

    def __init__(self, model: nn.Module, rtol: float = 1e-4, atol: float = 1e-4):
        self.model, self.rtol, self.atol = model, rtol, atol
        self.blocks = model_blocks(model)
        self.n = len(self.blocks)
        self.first: list[torch.Tensor] = []  # h_i^0
        self.over_steps: list[list[float]] = []  # per step, per block: D3
        self.over_blocks: list[list[float]] = []  # per step, per block: D4
        self.delta: dict[int, torch.Tensor] = {}  # last observed residual of each block
        self._step: dict[str, Any] = {}
        self.handles: list[Any] = []

    # hooks ---------------------------------------------------------------------------------
    def _on_call(self, module, args, kwargs):
        self._step = {"embed": None, "inp": {}, "out": {}, "head": None}

    def _on_embed(self, module, args, output):
        self._step["embed"] = output.detach()

    def _on_block_in(self, i: int) -> Callable:
        def hook(module, args, kwargs):
            self._step["inp"][i] = _first_tensor(args, kwargs).detach()
        return hook

    def _on_block_out(self, i: int) -> Callable:
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            self._step["out"][i] = out.detach()
        return hook

    def _on_head(self, module, args, kwargs):
        self._step["head"] = _first_tensor(args, kwargs).detach()

    def _on_done(self, module, args, kwargs, output):
        self._finish_step()

    # reconstruction -------------------------------------------------------------------------
    def _check(self, observed: torch.Tensor, expected: torch.Tensor, where: str) -> None:
        if not torch.allclose(observed.float(), expected.float(), rtol=self.rtol, atol=self.atol):
            raise RuntimeError(f"feature reconstruction failed at {where}: the tensor passed on by skipped blocks is not "
                               "`input + residual of their last run` (a cache that is not the paper's Sec. 2.2 cache?)")

    def _finish_step(self) -> None:
        st = self._step
        prev = st["embed"]
        passed = []
        for i in range(self.n):
            if i in st["out"]:
                if prev is not None:
                    self._check(st["inp"][i], prev, f"the input of block {i}")
                h = st["out"][i]
                self.delta[i] = h - st["inp"][i]
            else:
                if prev is None or i not in self.delta:
                    raise RuntimeError(f"block {i} was skipped before it ever ran: nothing to reconstruct from")
                h = prev + self.delta[i]
            passed.append(h)
            prev = h
        if st["head"] is not None:
            self._check(st["head"], prev, "the input of the output head")
        if not self.first:
            self.first = [h.clone() for h in passed]
        self.over_steps.append([mean_l2(h, h0) for h, h0 in zip(passed, self.first)])
        self.over_blocks.append([mean_l2(h, passed[0]) for h in passed])

    @contextmanager
    def attached(self) -> Iterator["FeatureRecorder"]:
        m = self.model
        self.handles = [m.register_forward_pre_hook(self._on_call, with_kwargs=True),
                        m.register_forward_hook(self._on_done, with_kwargs=True),
                        m.pos_embed.register_forward_hook(self._on_embed),
                        m.norm_out.register_forward_pre_hook(self._on_head, with_kwargs=True)]
        for i, b in enumerate(self.blocks):
            self.handles += [b.register_forward_pre_hook(self._on_block_in(i), with_kwargs=True),
                             b.register_forward_hook(self._on_block_out(i), with_kwargs=True)]
        try:
            yield self
        finally:
            for h in self.handles:
                h.remove()
            self.handles = []

    def result(self) -> dict[str, np.ndarray]:
        """{'over_steps': D3 (blocks, steps), 'over_blocks': D4 (blocks, steps)} as float32 arrays."""
        return {"over_steps": np.asarray(self.over_steps, dtype=np.float32).T,
                "over_blocks": np.asarray(self.over_blocks, dtype=np.float32).T}


def record_feature_distances(pipe: Any, call_kwargs: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """One sampling run of `pipe(**call_kwargs)` (fresh generator from `seed`) -> the raw D3 and D4 maps."""
    model, _ = resolve_target(pipe)
    state = get_attachment(pipe)
    if state is not None and state.method.name != "cache":
        raise ValueError(f"method={state.method.name!r} is attached: record features of the plain backbone or the cache")
    device = next(model.parameters()).device
    recorder = FeatureRecorder(model)
    with recorder.attached(), torch.no_grad():
        pipe(**call_kwargs, generator=torch.Generator(device="cpu").manual_seed(seed))
    steps = call_kwargs.get("num_inference_steps")
    out = recorder.result()
    if steps is not None and out["over_steps"].shape[1] != steps:
        raise RuntimeError(f"expected {steps} transformer calls, recorded {out['over_steps'].shape[1]} "
                           f"(device {device}); one pipeline call must batch CFG into one transformer call")
    return out


def feature_change(pipe: Any, call_kwargs: dict, cache: CacheConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Figs. 3 and 4 data for the baseline and the cache on the same prompts and noise.

    Returns raw maps `{baseline,cache}_{over_steps,over_blocks}` (blocks x steps) and the same maps
    normalised by the maximum of each figure over its two panels (`*_norm`).
    """
    if get_attachment(pipe) is not None:
        raise ValueError("the pipeline already carries a method: pass the plain pipeline (ilf.remove it first)")
    out = {f"baseline_{k}": v for k, v in record_feature_distances(pipe, call_kwargs, seed).items()}
    apply_cache(pipe, cache)
    try:
        out.update({f"cache_{k}": v for k, v in record_feature_distances(pipe, call_kwargs, seed).items()})
    finally:
        remove(pipe)
    for fig in ("over_steps", "over_blocks"):
        peak = max(float(out[f"baseline_{fig}"].max()), float(out[f"cache_{fig}"].max())) or 1.0
        for which in ("baseline", "cache"):
            out[f"{which}_{fig}_norm"] = out[f"{which}_{fig}"] / peak
    return out


def save_feature_change(maps: dict[str, np.ndarray], out_dir: str | Path, meta: dict) -> tuple[Path, Path]:
    """Write the maps (float32, blocks x steps) as `features.safetensors` and `features.npz` (the same arrays;
    the workflow reads the first, numpy users the second, both load without pickle) and `features.json`
    (meta), each atomically. Returns (safetensors path, json path)."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in maps.items()}
    st, npz, js = out_dir / "features.safetensors", out_dir / "features.npz", out_dir / "features.json"
    with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_json_atomic(js, {**meta, "distance": DISTANCE, "arrays": sorted(maps),
                           "layout": "blocks x steps", "normalisation": "each figure by its max over baseline and cache"})
    with atomic_path(st) as tmp:  # written last: the workflow's completion marker
        save_file(arrays, str(tmp), metadata={"distance": DISTANCE})
    return st, js


def load_feature_change(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) from a folder, `features.safetensors` or `features.npz` written by `save_feature_change`."""
    from safetensors.numpy import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "features.safetensors" if (path / "features.safetensors").exists() else path / "features.npz"
    if path.suffix == ".safetensors":
        arrays = load_file(str(path))
    else:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    js = path.with_suffix(".json")
    meta = json.loads(js.read_text()) if js.exists() else {}
    return arrays, meta
