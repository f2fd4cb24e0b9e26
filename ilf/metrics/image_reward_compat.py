"""What the `image-reward` 1.5 package (2023) needs from transformers 5, and nothing else.

The package's BLIP text encoder (`ImageReward/models/BLIP/med.py`) was written for transformers 4.
On transformers 5 it breaks in four places; each shim below restores exactly what that version
gave, only when the name is missing (on transformers 4 every shim is a no-op), and only around
`image-reward` code:

1. `BertTokenizer.additional_special_tokens_ids` is gone: `ilf.metrics.image_reward._init_tokenizer`
   uses `convert_tokens_to_ids("[ENC]")`, which both versions have (no shim).
2. `apply_chunking_to_forward`, `prune_linear_layer` and `find_pruneable_heads_and_indices` left
   `transformers.modeling_utils`: `med_import_names()` lends them to that module while the package's
   modules are imported (the first two from `transformers.pytorch_utils`; the third is used only
   by head pruning, which ImageReward never does, and raises).
3. `BertModel.__init__` calls `init_weights()`, which on transformers 5 needs `post_init()` to have
   run: `post_init_on_construction()` makes that call `post_init()` while the model is built.
4. `invert_attention_mask` / `get_head_mask` left `PreTrainedModel`: `add_mask_helpers(model)`
   binds transformers 4.55's definitions on the one text-encoder instance.

Equality with the official package on transformers 4.55.4 is a test
(`tests/metrics/test_image_reward.py::test_scores_equal_official_package_on_transformers_4`).
"""
from __future__ import annotations

import contextlib
import types
from typing import Iterator
from unittest import mock

import torch


def _no_head_pruning(*args, **kwargs):
    raise NotImplementedError("ImageReward's BLIP text encoder does not support head pruning on transformers 5")


@contextlib.contextmanager
def med_import_names() -> Iterator[None]:
    """Shim 2: the helpers `med.py` imports from `transformers.modeling_utils`, during the import only."""
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    lent = {"apply_chunking_to_forward": pytorch_utils.apply_chunking_to_forward,
            "prune_linear_layer": pytorch_utils.prune_linear_layer,
            "find_pruneable_heads_and_indices": _no_head_pruning}
    with contextlib.ExitStack() as stack:
        for name, value in lent.items():
            if not hasattr(modeling_utils, name):
                stack.enter_context(mock.patch.object(modeling_utils, name, value, create=True))
        yield


@contextlib.contextmanager
def post_init_on_construction(bert_model_cls: type) -> Iterator[None]:
    """Shim 3: `bert_model_cls.init_weights()` runs `post_init()` (which initialises) on transformers 5."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        yield
        return
    original = bert_model_cls.init_weights

    def init_weights(self) -> None:  # __init__ calls this; post_init() calls it back: run the original then
        if self.__dict__.get("_ilf_in_post_init"):
            return original(self)
        self.__dict__["_ilf_in_post_init"] = True
        try:
            self.post_init()
        finally:
            del self.__dict__["_ilf_in_post_init"]

    with mock.patch.object(bert_model_cls, "init_weights", init_weights):
        yield


def _invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers 4.55 `ModuleUtilsMixin.invert_attention_mask`: 1 -> 0, 0 -> dtype min, (B, 1, [1|T], S)."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    elif encoder_attention_mask.dim() == 2:
        extended = encoder_attention_mask[:, None, None, :]
    else:
        raise ValueError(f"encoder_attention_mask must be 2-D or 3-D, got shape {tuple(encoder_attention_mask.shape)}")
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False) -> list:
    """transformers 4.55 `ModuleUtilsMixin.get_head_mask` for `head_mask=None` (all ImageReward passes)."""
    if head_mask is not None:
        raise NotImplementedError("ImageReward's BLIP text encoder takes no head_mask on transformers 5")
    return [None] * num_hidden_layers


def add_mask_helpers(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """Shim 4: bind `invert_attention_mask` / `get_head_mask` on this instance where its class lacks them."""
    for name, fn in (("invert_attention_mask", _invert_attention_mask), ("get_head_mask", _get_head_mask)):
        if not hasattr(text_encoder, name):
            setattr(text_encoder, name, types.MethodType(fn, text_encoder))
    return text_encoder
