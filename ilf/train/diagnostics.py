"""Training diagnostics: how large the feedback is and what the loss terms are, on one fixed probe batch.

`ilf train` writes one record to `<run_dir>/train_diagnostics.jsonl` before the first step, at every
logged iteration and at every checkpoint. Each record measures the current feedback on the same probe
batch (the first `PROBE_SIZE` samples of the data, no condition dropout, noise from a fixed generator,
timesteps evenly spaced over 0..T-1), so records of one run are comparable with each other:

    scales            s_i for every inner-loop block b..e (multi-stream backbones feeding back k streams: a row of k)
    feedback_ratio    per loop block i: mean over probe samples of ||s_i f|| / ||h_i||, where f = F(h_e) is the
                      feedback and h_i the input of block i on the re-run that the feedback is added to
                      (h_b = h_{b-1}, the loop's input; h_i = the re-run output of block i-1 for i > b); norms
                      over all tokens and channels of a sample; multi-stream backbones: the image stream's (and
                      its scale)
    feedback_norm     per loop block i: mean over probe samples of ||f|| / ||h_i|| (the ratio before scaling)
    loss, loss_recon, loss_distill   the objective's terms on the probe batch (`distill: none` has no
                      loss_distill); train_log.jsonl holds the same terms averaged over the training batches
    output_change     mse(ILF output, plain backbone output) on the probe inputs: what the feedback changes

Measuring never touches the global RNG, the parameters or their gradients, so a resumed run stays exact.
"""
from __future__ import annotations

import inspect

from typing import Any

import torch
from torch import nn

from ..adapters import adapter_for, image_stream, model_blocks
from ..attach import bypass, get_attachment
from .data import LatentShards, _seed, collate
from .objectives import Objective

DIAGNOSTICS_NAME = "train_diagnostics.jsonl"
PROBE_SIZE = 8


def probe_batch(shards: LatentShards, seed: int, num_train_timesteps: int, size: int = PROBE_SIZE) -> dict[str, torch.Tensor]:
    """The fixed probe batch: samples 0..size-1 with their own conditions, noise from a generator seeded by
    (seed, a probe key), timestep k = floor((k + 0.5) T / size) for sample k."""
    n = min(size, len(shards))
    g = torch.Generator().manual_seed(_seed(seed, 0x9B0BE))
    items = []
    for k in range(n):
        item = shards[k]
        item["noise"] = torch.randn(item["latents"].shape, generator=g)
        item["timestep"] = torch.tensor(int((k + 0.5) * num_train_timesteps / n), dtype=torch.long)
        item["dropped"] = False
        items.append(item)
    return collate(items)


def _sample_norms(x: torch.Tensor) -> torch.Tensor:
    return x.float().flatten(1).norm(dim=1)


def _loop_states(objective: Objective, x_t: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]):
    """One feedback forward, watching the adapter's block calls: (f, [h_b, ..., h_e]) as defined in the module
    doc, each the image stream of its state."""
    tr = objective.transformer
    method = get_attachment(tr).method
    b, e = method.config.loop_start, method.config.loop_end
    blocks = model_blocks(tr)
    adapter = adapter_for(tr)
    own, block_fn = "block" in vars(adapter), inspect.getattr_static(adapter, "block")  # restored below
    run_block = adapter.block
    calls: list[tuple[nn.Module, Any, Any]] = []

    def watched(model, block, h, prep, cond):
        out = run_block(model, block, h, prep, cond)
        calls.append((block, h, out))
        return out

    adapter.block = staticmethod(watched)
    try:
        objective.predict(x_t, t, kwargs)
    finally:
        if own:
            adapter.block = block_fn
        else:
            del adapter.block
    fb = [out for block, _, out in calls if block is method.feedback]
    runs = {i: [(h, out) for block, h, out in calls if block is blocks[i]] for i in range(b, e + 1)}
    if len(fb) != 1 or any(len(c) != 2 for c in runs.values()):
        raise RuntimeError("the feedback forward did not run each loop block twice and F once")
    states = [runs[b][0][0]] + [runs[i][1][1] for i in range(b, e)]
    return image_stream(fb[0]), [image_stream(h) for h in states]


@torch.no_grad()
def measure(objective: Objective, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The diagnostics of the current feedback on `batch` (a collated probe batch on the model's device).

    Args:
        objective: the run's objective (its transformer has ILF attached; its mode decides the loss terms).
        batch: the probe batch, already on the device.

    Returns:
        `scales`, `feedback_ratio`, `feedback_norm`, `loss`, `loss_recon` (and `loss_distill` unless the
        objective is `none`), `output_change`, `probe_size`.
    """
    tr = objective.transformer
    loss, terms = objective(batch)
    kwargs = objective.inputs(batch)
    x_t = objective.noised(batch["latents"], batch["noise"], batch["timestep"])
    with objective._ctx():
        f, states = _loop_states(objective, x_t, batch["timestep"], kwargs)
        student = objective.predict(x_t, batch["timestep"], kwargs)
        with bypass(tr):
            plain = objective.predict(x_t, batch["timestep"], kwargs)
    scales = tr.ilf_scales.detach().float().cpu()
    image_scales = scales if scales.ndim == 1 else scales[:, 0]  # (m, k): the image stream's column
    f_norm = _sample_norms(f).cpu()
    norm = [float((f_norm / _sample_norms(h).cpu().clamp_min(1e-30)).mean()) for h in states]
    return {"scales": scales.tolist(), "feedback_ratio": [abs(float(s)) * r for s, r in zip(image_scales, norm)],
            "feedback_norm": norm, "loss": float(loss.mean()), **{k: float(v.mean()) for k, v in terms.items()},
            "output_change": float(((student - plain) ** 2).mean()), "probe_size": int(x_t.shape[0])}
