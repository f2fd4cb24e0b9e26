"""Inner Loop Feedback (ILF) for diffusion transformers (Gwilliam et al.): attach, schedule, cache, account.

    from ilf import FeedbackConfig, apply_feedback, load_feedback, apply_cache, remove

Names are imported lazily (PEP 562), so `import ilf.report` or `ilf tables` never loads torch/diffusers.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "FeedbackConfig": "config", "CacheConfig": "config", "cached_block_indices": "config",
    "apply_feedback": "feedback", "feedback_parameters": "feedback", "apply_cache": "cache",
    "attach_method": "attach", "remove": "attach", "reset": "attach", "bypass": "attach", "get_attachment": "attach",
    "expected_block_forwards": "accounting", "count_block_forwards": "accounting", "calls_per_step": "accounting",
    "BlockForwardCounter": "accounting", "save_feedback": "checkpoint", "load_feedback": "checkpoint",
    "resolve_feedback_steps": "schedule", "post_feedback_timestep": "schedule",
    "BACKBONES": "registry", "load_pipeline": "registry", "model_blocks": "adapters",
    "ILFConfigError": "errors", "UnsupportedModelError": "errors", "AlreadyAttachedError": "errors",
    "CheckpointError": "errors", "MissingAssetError": "errors", "NonFiniteLossError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ilf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
