"""Tiny configurations of the real backbone classes for the toy world (the toy backbones).

`PixArtTransformer2DModel` (text-to-image, conditioned on the toy caption encoder) and
`DiTTransformer2DModel` (class-to-image, digits 0..9), both 14 blocks deep: the paper's 28 halved, so
every paper block index or count maps to half of it (loop 8..19 -> 4..9). They run in pixel space
(32x32x3) through `ToyPixelVAE`, an identity "VAE" with scaling factor 1 that the stock pipelines
accept (one `block_out_channels` entry -> `vae_scale_factor = 1`).
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from ilf.toy.tasks import TASKS, check_task  # noqa: F401  (TASKS: re-exported beside the backbones)

BACKBONE_NAMES: dict[str, str] = {"t2i": "toy-t2i", "c2i": "toy-c2i"}
NUM_LAYERS = 14  # paper backbones have 28 blocks; the toy halves every block index and count
RESOLUTION = 32  # pixels; pixel space, so also the transformer's sample_size
NUM_CLASSES = 10  # digits 0..9
NULL_CLASS = 1000  # DiTPipeline hard-codes 1000 as the unconditional label
CAPTION_CHANNELS = 64  # = ilf.toy.encoder.ENCODER_CONFIG["d_model"] (kept literal: training needs no transformers)

# Common transformer settings: 32-wide heads, 4x4 pixel patches -> 64 tokens.
_COMMON = dict(attention_head_dim=32, in_channels=3, out_channels=3, num_layers=NUM_LAYERS,
               sample_size=RESOLUTION, patch_size=4, norm_elementwise_affine=False)

# t2i: 4 heads (128 wide). c2i: 3 heads (96 wide): digits are easier, and DiT's per-block label tables
# (14 x 1001 x width) dominate its size. Weights ship as float16 (~7.8 MB + ~8.4 MB).
PIXART_CONFIG: dict = dict(_COMMON, num_attention_heads=4, cross_attention_dim=128, caption_channels=CAPTION_CHANNELS,
                           norm_type="ada_norm_single", num_embeds_ada_norm=1000, norm_eps=1e-6,
                           use_additional_conditions=False)
DIT_CONFIG: dict = dict(_COMMON, num_attention_heads=3, norm_type="ada_norm_zero", num_embeds_ada_norm=NULL_CLASS, norm_eps=1e-5)

# DDPM training schedule of PixArt-alpha and DiT: 1000 steps, linear betas 1e-4..0.02, epsilon prediction.
NOISE_SCHEDULE: dict = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                            prediction_type="epsilon")


class ToyPixelVAE(ModelMixin, ConfigMixin):
    """Identity autoencoder: the toy backbones diffuse pixels in [-1, 1] directly.

    `encode` returns a deterministic `DiagonalGaussianDistribution` (sample == mode == input) and
    `decode` returns its input, so code written for `AutoencoderKL` runs unchanged.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = 3, block_out_channels: tuple[int, ...] = (3,),
                 scaling_factor: float = 1.0):
        super().__init__()
        # No weights; a buffer gives the module a device and dtype for the pipelines' bookkeeping.
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        dist = DiagonalGaussianDistribution(torch.cat([x, torch.zeros_like(x)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **_):
        return DecoderOutput(sample=z) if return_dict else (z,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)


def build_transformer(task: str, seed: int = 0) -> PixArtTransformer2DModel | DiTTransformer2DModel:
    """A randomly initialised toy backbone (seeded); `pretrain` trains it, `load_toy_pipeline` loads the shipped one."""
    check_task(task)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = PixArtTransformer2DModel(**PIXART_CONFIG) if task == "t2i" else DiTTransformer2DModel(**DIT_CONFIG)
    finally:
        torch.random.set_rng_state(state)
    return model


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**NOISE_SCHEDULE, clip_sample=False)


def sampling_scheduler() -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2M), the sampler of the paper's evaluation, on the training noise schedule."""
    return DPMSolverMultistepScheduler(**NOISE_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2,
                                       lower_order_final=True)


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
