"""LOCAL STOPGAP (helper B1): "does this transformer call start a new sampling run?"

Helper A is writing the one run-boundary detector in `ilf/context.py`; until it lands, this is the
smallest piece the peers need, behind one function, built on `ilf.context.step_context` (the same rule
`ilf.attach` uses: a call at step 0 of the scheduler's run starts a run). The lead replaces the body
with A's detector.
"""
from __future__ import annotations

from typing import Any

import torch

from ..context import step_context


def starts_run(scheduler: Any, timestep: Any, cache: dict) -> bool:
    """True when a transformer call with `timestep` is step 0 of `scheduler`'s current run.

    With no scheduler (a bare transformer) nothing is detected: call `ilf.peers.reset_peer` between runs.
    """
    if scheduler is None or timestep is None:
        return False
    ctx = step_context(scheduler, torch.as_tensor(timestep), cache)
    return ctx is not None and ctx.step_index == 0
