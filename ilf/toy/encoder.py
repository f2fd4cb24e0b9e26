"""The toy caption encoder: a word-level tokenizer over the toy grammar and a tiny frozen T5 encoder.

It stands in for PixArt's T5-XXL (paper Sec. 4.1): same classes (`PreTrainedTokenizerFast`,
`T5EncoderModel`), so a stock `PixArtAlphaPipeline` accepts plain `prompt=` strings. The encoder is
randomly initialised from a seed and never trained (like T5 in PixArt, it is frozen); the backbone's
caption projection learns to read it. Both ship beside the toy backbone (ilf/toy/assets/toy-t2i/).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from ilf.toy.data import VOCABULARY

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
MAX_SEQUENCE_LENGTH = 12  # longest caption is 7 words + </s>; pass as `max_sequence_length=` to the pipeline

# Tiny T5 encoder; d_model is the backbone's `caption_channels`.
ENCODER_CONFIG: dict = {
    "d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2,
    "dropout_rate": 0.0, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-splitting word-level tokenizer that appends </s> (as T5's does)."""
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    vocab.update({w: i + 3 for i, w in enumerate(VOCABULARY)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                      special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=MAX_SEQUENCE_LENGTH, padding_side="right")


def build_text_encoder(vocab_size: int, seed: int = 0) -> T5EncoderModel:
    """A randomly initialised T5 encoder (seeded), frozen and in eval mode."""
    config = T5Config(vocab_size=vocab_size, **ENCODER_CONFIG)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = T5EncoderModel(config)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval().requires_grad_(False)


def build_caption_encoder(seed: int = 0) -> tuple[PreTrainedTokenizerFast, T5EncoderModel]:
    tokenizer = build_tokenizer()
    return tokenizer, build_text_encoder(len(tokenizer), seed)


def save_caption_encoder(tokenizer: PreTrainedTokenizerFast, encoder: T5EncoderModel, directory: str | Path) -> None:
    """Write `tokenizer/` (tokenizer.json + config) and `text_encoder/` (safetensors + config.json)."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory / "tokenizer")
    encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)


def load_caption_encoder(directory: str | Path) -> tuple[PreTrainedTokenizerFast, T5EncoderModel]:
    directory = Path(directory)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(directory / "text_encoder", use_safetensors=True)
    return tokenizer, encoder.eval().requires_grad_(False)


@torch.no_grad()
def encode_captions(tokenizer: PreTrainedTokenizerFast, encoder: T5EncoderModel, captions: list[str],
                    max_length: int = MAX_SEQUENCE_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (B, L, d_model), attention mask (B, L)) exactly as PixArtAlphaPipeline.encode_prompt makes them."""
    enc = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    out = encoder(enc.input_ids.to(encoder.device), attention_mask=enc.attention_mask.to(encoder.device))[0]
    return out, enc.attention_mask
