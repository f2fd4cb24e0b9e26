"""Inner Loop Feedback (ILF) for diffusion transformers (Gwilliam et al.): attach, schedule, cache, account.

    from ilf import FeedbackConfig, apply_feedback, load_feedback, apply_cache, remove
"""
from .accounting import BlockForwardCounter, count_block_forwards, expected_block_forwards
from .attach import apply_cache, apply_feedback, attach_method, bypass, feedback_parameters, get_attachment, remove, reset
from .checkpoint import load_feedback, save_feedback
from .config import CacheConfig, FeedbackConfig, cached_block_indices
from .errors import (AlreadyAttachedError, CheckpointError, ILFConfigError, MissingAssetError,
                     UnsupportedModelError)
from .registry import BACKBONES, load_pipeline
from .schedule import post_feedback_timestep, resolve_feedback_steps

__version__ = "0.1.0"
__all__ = [
    "FeedbackConfig", "CacheConfig", "apply_feedback", "apply_cache", "attach_method", "remove", "reset", "bypass",
    "feedback_parameters", "get_attachment", "expected_block_forwards", "count_block_forwards",
    "BlockForwardCounter", "save_feedback", "load_feedback", "resolve_feedback_steps", "post_feedback_timestep",
    "cached_block_indices", "BACKBONES", "load_pipeline", "ILFConfigError", "UnsupportedModelError",
    "AlreadyAttachedError", "CheckpointError", "MissingAssetError",
]
