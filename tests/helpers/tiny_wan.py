"""A tiny Wan 2.1 text-to-video transformer, VAE and stock `WanPipeline` built from configs (no weights, no hub)."""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline,
                       WanTransformer3DModel)

TEXT_DIM = 16
TEXT_TOKENS = 6
WIDTH = 16  # num_attention_heads * attention_head_dim


def tiny_wan(num_layers: int = 6, seed: int = 0, **kw) -> WanTransformer3DModel:
    """Wan 2.1's architecture at width 16 (2 heads of 8), text width 16; `image_dim` makes it the I2V variant."""
    torch.manual_seed(seed)
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
               text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
    cfg.update(kw)
    model = WanTransformer3DModel(**cfg).eval()
    with torch.no_grad():  # modulation tables larger than the init's randn / sqrt(D): the time condition shows
        for block in model.blocks:
            block.scale_shift_table.normal_(0, 0.3)
    return model


def as_loaded(model: WanTransformer3DModel, dtype: torch.dtype) -> WanTransformer3DModel:
    """`model` in `dtype` as `from_pretrained(..., torch_dtype=dtype)` loads it: the parameters of its
    `_keep_in_fp32_modules` (rope, time embedder, modulation tables, norms) stay float32."""
    keep = model._keep_in_fp32_modules
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(m in name.split(".") for m in keep):
                p.data = p.data.to(dtype)
    return model


def tiny_wan_vae(seed: int = 0) -> AutoencoderKLWan:
    """Wan's causal 3D VAE, 4 latent channels: 8x spatial and 4x temporal compression."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                            latents_std=[1.0] * 4).eval()


def unipc_flow() -> UniPCMultistepScheduler:
    """The scheduler of Wan-AI/Wan2.1-T2V-*-Diffusers (scheduler/scheduler_config.json, flow_shift 3.0)."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                   num_train_timesteps=1000)


def flow_euler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def tiny_wan_pipeline(num_layers: int = 6, seed: int = 0, scheduler=None,
                      dtype: torch.dtype = torch.float32) -> WanPipeline:
    """A stock `WanPipeline` (no text encoder: prompt embeddings are passed in) around the tiny parts; the
    transformer in `dtype` as loaded (`as_loaded`), the VAE in float32 (as Wan's model card loads it)."""
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_vae(seed),
                       transformer=as_loaded(tiny_wan(num_layers, seed), dtype),
                       scheduler=scheduler if scheduler is not None else unipc_flow())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_prompt_embeds(batch: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_embeds=torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g),
                negative_prompt_embeds=torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g))


def run_wan(pipe: WanPipeline, steps: int, seed: int = 0, guidance_scale: float = 5.0, output_type: str = "latent",
            **kw):
    """One clip (5 frames at 32x32: latents (1, 4, 2, 4, 4)) on a fixed seed; returns `.frames`."""
    gen = torch.Generator().manual_seed(seed)
    return pipe(height=32, width=32, num_frames=5, num_inference_steps=steps, guidance_scale=guidance_scale,
                generator=gen, output_type=output_type, **wan_prompt_embeds(), **kw).frames


def wan_inputs(batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Direct forward inputs: latents (batch, 4, 2, 4, 4) (8 tokens), timesteps as the pipeline passes them, text."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype)
    t = torch.tensor([999.0, 412.5][:batch])
    text = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g).to(dtype)
    return dict(hidden_states=x, timestep=t, encoder_hidden_states=text)


def tiny_umt5_tokenizer(texts: list[str]):
    """A word-level tokenizer over the words of `texts` (lower-cased, punctuation split off, `</s>` appended as
    UMT5's does): stands in for Wan's umT5 tokenizer so a stock `WanPipeline` takes plain `prompt=` strings."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="right")


def tiny_umt5(vocab_size: int, seed: int = 0):
    """A one-layer `UMT5EncoderModel` of width `TEXT_DIM` (Wan's text encoder class), random and frozen."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                     feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)
    return UMT5EncoderModel(cfg).eval().requires_grad_(False)


def tiny_wan_text_pipeline(texts: list[str], num_layers: int = 2, seed: int = 0) -> WanPipeline:
    """`tiny_wan_pipeline` with a tiny umT5 text encoder and tokenizer over `texts`: called with `prompt=` as the
    harness calls a real Wan (`ilf generate`), including the empty negative prompt of guidance."""
    pipe = tiny_wan_pipeline(num_layers, seed)
    tokenizer = tiny_umt5_tokenizer(texts)
    pipe.register_modules(tokenizer=tokenizer, text_encoder=tiny_umt5(len(tokenizer), seed))
    return pipe
