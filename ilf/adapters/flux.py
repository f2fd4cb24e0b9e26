"""`FluxTransformer2DModel` (FLUX.1-dev, FLUX.1-schnell): double-stream blocks, then single-stream blocks.

The state is `(image, text)` through the whole block sequence (`transformer_blocks`, then
`single_transformer_blocks`; METHOD.md "Multi-stream blocks"): in diffusers >= 0.35 both block classes take
`(hidden_states, encoder_hidden_states, temb, image_rotary_emb, joint_attention_kwargs)` and return
`(encoder_hidden_states, hidden_states)` (a single-stream block concatenates the streams inside and splits them
again). cond(t) is `temb`, the time (+ guidance) + pooled-text embedding every block and the output norm take.

The pipeline passes `timestep = t / 1000` (t in the scheduler's units, sigma * 1000) and the model multiplies by
1000 again, so `timestep_scale` = 1/1000.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..errors import UnsupportedModelError
from . import Prepared, argument, batch_timestep, call_block
from ._lora import has_lora

_REFUSED = ("controlnet_block_samples", "controlnet_single_block_samples")



def _refuse(argument_name: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{argument_name} is not supported with a method attached to "
                                 f"FluxTransformer2DModel ({why}); call ilf.remove(target) to run it")


class FluxAdapter:
    """`FluxTransformer2DModel.forward` in pieces (diffusers' `models/transformers/transformer_flux.py`).

    Supported inputs (bit-identical to the stock forward): everything `FluxPipeline` passes, `guidance`
    (FLUX.1-dev) or none (FLUX.1-schnell), `joint_attention_kwargs` (passed to every block; its LoRA `scale`
    must be 1.0 on a LoRA-carrying model), `img_ids` / `txt_ids` as 2-d or (deprecated) 3-d tensors.
    Refused with `UnsupportedModelError`: controlnet residuals (`controlnet_block_samples`,
    `controlnet_single_block_samples`), IP-adapter embeddings (`joint_attention_kwargs["ip_adapter_image_embeds"]`)
    and a LoRA `scale` other than 1.0 on a model carrying LoRA layers.
    """

    model_class = FluxTransformer2DModel
    pipelines = ("FluxPipeline",)
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    streams = ("image", "text")
    timestep_scale = 1.0 / 1000.0  # FluxPipeline passes t / 1000

    @staticmethod
    def timestep_of(args: tuple, kwargs: dict) -> Any:
        """The call's timestep in the scheduler's units: the `timestep` argument times 1000."""
        timestep = argument(args, kwargs, "timestep", 3)
        return None if timestep is None else timestep * 1000

    @staticmethod
    def prepare(model, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None,
                controlnet_block_samples=None, controlnet_single_block_samples=None, return_dict=True,
                controlnet_blocks_repeat=False) -> Prepared:
        # 0. What the method cannot run as the stock forward does
        for name, value in zip(_REFUSED, (controlnet_block_samples, controlnet_single_block_samples)):
            if value is not None:
                raise _refuse(name, "controlnet residuals are added per block of the stock loop")
        if joint_attention_kwargs is not None:  # as `apply_lora_scale`: the blocks get a copy without "scale"
            joint_attention_kwargs = dict(joint_attention_kwargs)
            if "ip_adapter_image_embeds" in joint_attention_kwargs:
                raise _refuse("joint_attention_kwargs['ip_adapter_image_embeds']", "IP-adapter")
            scale = joint_attention_kwargs.pop("scale", 1.0)
            if scale != 1.0 and has_lora(model):
                raise _refuse(f"joint_attention_kwargs['scale']={scale!r}", "LoRA scaling per call; fuse the "
                              "LoRA with that scale or use set_adapters")
        # 1. Input (as FluxTransformer2DModel.forward)
        hidden = model.x_embedder(hidden_states)
        encoder = model.context_embedder(encoder_hidden_states)
        if txt_ids.ndim == 3:  # deprecated batched ids: the first sample's
            txt_ids = txt_ids[0]
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        image_rotary_emb = model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        if not (torch.is_tensor(timestep) and timestep.ndim == 1):
            timestep = batch_timestep(timestep, hidden.shape[0], hidden.device)
        return Prepared((hidden, encoder), timestep, 0, 0, return_dict,
                        dict(pooled_projections=pooled_projections, guidance=guidance,
                             image_rotary_emb=image_rotary_emb, joint_attention_kwargs=joint_attention_kwargs))

    @staticmethod
    def cond(model, prep: Prepared, timestep: torch.Tensor) -> torch.Tensor:
        """cond(t): `temb` (B, D), the embedded timestep (model units, times 1000), guidance and pooled text."""
        dtype = prep.hidden[0].dtype
        timestep = timestep.to(dtype) * 1000
        guidance = prep.kwargs["guidance"]
        pooled = prep.kwargs["pooled_projections"]
        if guidance is None:
            return model.time_text_embed(timestep, pooled)
        return model.time_text_embed(timestep, guidance.to(dtype) * 1000, pooled)

    @staticmethod
    def block(model, block: nn.Module, h: tuple, prep: Prepared, cond: torch.Tensor) -> tuple:
        # 2. One block (double- or single-stream) at condition `cond`: (image, text) -> (image, text)
        k = prep.kwargs
        text, image = call_block(model, block, h[0], (h[1], cond, k["image_rotary_emb"], k["joint_attention_kwargs"]))
        return (image, text)

    @staticmethod
    def head(model, h: tuple, prep: Prepared, cond: torch.Tensor):
        # 3. Output (the image stream, normalised at the condition)
        out = model.proj_out(model.norm_out(h[0], cond))
        return Transformer2DModelOutput(sample=out) if prep.return_dict else (out,)


ADAPTER = FluxAdapter
