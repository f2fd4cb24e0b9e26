"""The flow-matching toy backbone `toy-flux`: a tiny `FluxTransformer2DModel` on the shapes task (t2i).

The real FLUX.1 class, 2 double-stream + 4 single-stream blocks, 4 heads x 32 = 128 wide, trained by
`ilf toy pretrain --task t2i --backbone toy-flux` with rectified flow matching (Esser et al. 2024, "Scaling
Rectified Flow Transformers", Sec. 2-3; the FLUX.1 recipe):

    x_s = (1 - s) x0 + s eps,   v = eps - x0,   loss = || v - v_theta(x_s, s, c) ||^2,
    s = sigmoid(n), n ~ N(0, 1)   (logit-normal timestep sampling, Sec. 3.1 of that paper).

The model takes `timestep = s` in [0, 1] (FLUX multiplies it by 1000 inside), exactly what `FluxPipeline` passes.

Conditioning goes through the shipped frozen toy caption encoder (`ilf/toy/assets/toy-t2i/`): its 12-token
sequence embedding (B, 12, 64) is `encoder_hidden_states` (FLUX's T5 stream; all 12 tokens, no attention mask,
as `FluxPipeline` passes them) and the masked mean of that sequence over the caption's real tokens (B, 64) is
`pooled_projections` (FLUX's CLIP pooled vector; the toy has no CLIP). The caption is dropped (empty caption)
10% of the time; `guidance_embeds=False` and sampling uses true classifier-free guidance (`true_cfg_scale`,
two transformer calls per step) rather than FLUX.1-dev's distilled guidance embedding.

Pixel space: `ToyPixelShuffleVAE` is an exact, weightless "VAE" (2x2 space-to-depth, 3 -> 12 channels,
`vae_scale_factor` 2); `FluxPipeline` packs 2x2 latent patches, so each token is a 4x4 pixel patch
(48 channels, 64 tokens), as in the PixArt toy.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from ilf.toy.backbones import CAPTION_CHANNELS, RESOLUTION

FLUX_BACKBONE = "toy-flux"
LATENT_CHANNELS = 12  # 3 colour channels x 2 x 2 (space-to-depth)
LATENT_SIZE = RESOLUTION // 2  # 16x16 latents -> 8x8 packed tokens
NEGATIVE_CAPTION = ""  # the uncond caption of true classifier-free guidance (`toy_flux_prompt_kwargs`)

FLUX_CONFIG: dict = dict(patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=None, num_layers=2,
                         num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
                         joint_attention_dim=CAPTION_CHANNELS, pooled_projection_dim=CAPTION_CHANNELS,
                         guidance_embeds=False, axes_dims_rope=(8, 12, 12))

# FLUX.1's scheduler config (resolution-dependent shift mu from the token count; 64 tokens -> mu = 0.4675).
FLOW_SCHEDULER: dict = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


class ToyPixelShuffleVAE(ModelMixin, ConfigMixin):
    """Exact weightless autoencoder of the flow toy: `encode` is 2x2 space-to-depth (B, 3, H, W) -> (B, 12, H/2, W/2),
    `decode` its inverse; `scaling_factor` 1 and `shift_factor` 0, so `FluxPipeline` decodes to the pixels it sampled.

    Two `block_out_channels` entries give `vae_scale_factor = 2` in the stock pipelines.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = LATENT_CHANNELS,
                 block_out_channels: tuple[int, ...] = (LATENT_CHANNELS, LATENT_CHANNELS), scaling_factor: float = 1.0,
                 shift_factor: float = 0.0):
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_unshuffle(x, 2)
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **_):
        x = F.pixel_shuffle(z, 2)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)


def build_flux_transformer(seed: int = 0) -> FluxTransformer2DModel:
    """A randomly initialised toy FLUX transformer (seeded); `pretrain` trains it, `load_toy_flux_pipeline` loads it."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return FluxTransformer2DModel(**FLUX_CONFIG)
    finally:
        torch.random.set_rng_state(state)


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1's Euler flow-matching sampler with its resolution-dependent shift."""
    return FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER)


def pooled_embedding(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of a caption's sequence embedding over its real tokens (the toy's stand-in for CLIP's pooled vector).

    Args:
        embeddings: (B, L, D) sequence embedding of the toy caption encoder.
        mask: (B, L) attention mask, 1 on real tokens (every caption has at least its `</s>`).

    Returns:
        (B, D) pooled embedding, in the dtype of `embeddings`.
    """
    m = mask.to(embeddings.dtype).unsqueeze(-1)
    return (embeddings * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def pack_pixels(x: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, 32, 32) in [-1, 1] -> packed FLUX tokens (B, 64, 48), as `FluxPipeline` lays out its latents."""
    z = F.pixel_unshuffle(x, 2)
    return FluxPipeline._pack_latents(z, z.shape[0], z.shape[1], z.shape[2], z.shape[3])


def position_ids(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 text_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(img_ids (64, 3), txt_ids (L, 3)) exactly as `FluxPipeline` makes them for a 32x32 toy image."""
    from ilf.toy.encoder import MAX_SEQUENCE_LENGTH

    img = FluxPipeline._prepare_latent_image_ids(1, LATENT_SIZE // 2, LATENT_SIZE // 2, device, dtype)
    return img, torch.zeros(text_length or MAX_SEQUENCE_LENGTH, 3, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------- pipeline
def flux_asset_path(root: str | Path | None = None) -> Path:
    """Folder of the shipped toy FLUX backbone (`ilf/toy/assets/toy-flux`, or `<root>/toy-flux`)."""
    from ilf.toy.pipelines import ASSETS

    return Path(root or ASSETS) / FLUX_BACKBONE


def check_flux_assets(root: str | Path | None = None) -> Path:
    """The toy FLUX folder, or MissingAssetError naming the first missing file and the command that makes it.

    The caption encoder is the one shipped with toy-t2i (`<root>/toy-t2i/`), checked as well.
    """
    from ilf.errors import MissingAssetError
    from ilf.toy.pipelines import check_assets
    from ilf.toy.pretrain import TRANSFORMER_DIR, WEIGHTS_NAME

    check_assets("t2i", root)
    folder = flux_asset_path(root)
    for rel in (f"{TRANSFORMER_DIR}/config.json", f"{TRANSFORMER_DIR}/{WEIGHTS_NAME}"):
        if not (folder / rel).is_file():
            raise MissingAssetError(
                f"toy backbone file {rel} of {FLUX_BACKBONE}", str(folder),
                f"ilf toy pretrain --task t2i --backbone {FLUX_BACKBONE} --out {folder}",
                detail="the toy backbones ship with the repository; a missing file means a broken checkout, "
                       "or re-create it with that command (see docs/toy.md)")
    return folder


def load_toy_flux_pipeline(device: str | torch.device = "cpu", root: str | Path | None = None,
                           torch_dtype: torch.dtype = torch.float32) -> FluxPipeline:
    """A stock `FluxPipeline` around the shipped toy FLUX backbone: no text encoders (prompt embeddings are passed in,
    `toy_flux_prompt_kwargs`), `ToyPixelShuffleVAE`, FLUX.1's `FlowMatchEulerDiscreteScheduler`.

    Args:
        device: where the pipeline runs.
        root: asset root holding `toy-flux/` and `toy-t2i/` (default: the shipped `ilf/toy/assets`).
        torch_dtype: dtype of the transformer (float32, bfloat16 or float16).

    Returns:
        The pipeline; call it with `**toy_flux_prompt_kwargs(prompts, guidance_scale)` and `**toy_flux_call_kwargs()`.

    Raises:
        MissingAssetError: a shipped file is missing.

    Example:
        ```py
        pipe = load_toy_flux_pipeline()
        images = pipe(**toy_flux_prompt_kwargs(["two small red circles on the left"], 4.0), num_inference_steps=20,
                      generator=torch.Generator().manual_seed(0), **toy_flux_call_kwargs()).images
        ```
    """
    from ilf.toy.pretrain import TRANSFORMER_DIR

    folder = check_flux_assets(root)
    transformer = FluxTransformer2DModel.from_pretrained(folder / TRANSFORMER_DIR, torch_dtype=torch_dtype)
    pipe = FluxPipeline(scheduler=flow_scheduler(), vae=ToyPixelShuffleVAE(), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.default_sample_size = LATENT_SIZE  # the toy's native 32x32 (FluxPipeline's default would be 128: 256 px)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def toy_flux_call_kwargs() -> dict:
    """Keyword arguments every toy FLUX call needs: the toy's 32x32 size (FluxPipeline's default would be 256x256)."""
    return {"height": RESOLUTION, "width": RESOLUTION}


@lru_cache(maxsize=4)
def _caption_encoder(root: str | None):
    from ilf.toy.encoder import load_caption_encoder
    from ilf.toy.pipelines import check_assets

    return load_caption_encoder(check_assets("t2i", root))


@torch.no_grad()
def toy_flux_embeddings(captions: list[str], root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy FLUX condition of `captions`: the shipped caption encoder's sequence embedding and its pooled mean.

    What `toy_flux_prompt_kwargs` passes to the pipeline and `ilf precompute` stores for ILF training.

    Args:
        captions: B toy captions ("" is the unconditional caption true CFG and condition dropout use).
        root: asset root holding `toy-t2i/` (default: the shipped assets).

    Returns:
        `prompt_embeds` (B, 12, 64) (every token, no mask, as FluxPipeline passes T5's) and `pooled_prompt_embeds`
        (B, 64) (`pooled_embedding` over the real tokens), float32 on the CPU.
    """
    from ilf.toy.encoder import encode_captions

    tokenizer, encoder = _caption_encoder(None if root is None else str(root))
    emb, mask = encode_captions(tokenizer, encoder, list(captions))
    return emb.float(), pooled_embedding(emb.float(), mask)


@torch.no_grad()
def toy_flux_prompt_kwargs(prompts: list[str], guidance_scale: float = 1.0, root: str | Path | None = None) -> dict:
    """`FluxPipeline` arguments conditioning on `prompts` through the shipped toy caption encoder.

    Args:
        prompts: B toy captions.
        guidance_scale: true classifier-free guidance scale (`true_cfg_scale`; the empty caption is the negative);
            <= 1 gives no guidance and one transformer call per step, > 1 two calls per step.
        root: asset root holding `toy-t2i/` (default: the shipped assets).

    Returns:
        `prompt_embeds` (B, 12, 64), `pooled_prompt_embeds` (B, 64), `true_cfg_scale`, and for guidance > 1
        `negative_prompt_embeds`, `negative_pooled_prompt_embeds`, all float32 on the CPU (the pipeline moves them).
    """
    emb, pooled = toy_flux_embeddings(list(prompts) + [NEGATIVE_CAPTION], root)
    out = {"prompt_embeds": emb[:-1], "pooled_prompt_embeds": pooled[:-1], "true_cfg_scale": float(guidance_scale)}
    if guidance_scale > 1:
        n = len(prompts)
        out.update(negative_prompt_embeds=emb[-1:].expand(n, -1, -1).contiguous(),
                   negative_pooled_prompt_embeds=pooled[-1:].expand(n, -1).contiguous())
    return out


def sample_toy_flux(pipe: FluxPipeline, prompts: list[str], steps: int, seed: int = 0,
                    guidance_scale: float = 4.0):
    """(N, 32, 32, 3) images in [0, 1] of one toy FLUX call; the same `seed` gives the same initial noise."""
    return pipe(num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(seed),
                **toy_flux_prompt_kwargs(prompts, guidance_scale), **toy_flux_call_kwargs()).images
