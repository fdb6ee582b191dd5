"""A tiny random-weight SANA model, built offline in about a second (tests and demos).

SANA-shaped throughout: a one-block ``SanaTransformer2DModel`` (linear self-attention,
cross-attention, GLU feed-forward), a two-stage ``AutoencoderDC`` (4 latent channels), a
one-layer Gemma-2 text encoder with a word-level tokenizer over a small vocabulary, and the
flow-matching Euler scheduler. Saved as a diffusers folder, which ``SanaPipeline`` and
lorakit-sd load as they load the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: words the tiny tokenizer knows (others become <unk>)
WORDS = [
    "a",
    "photo",
    "of",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "circle",
    "square",
    "triangle",
    "star",
    "cat",
    "dog",
    "on",
    "in",
    "the",
    "white",
    "black",
    "background",
    "small",
    "large",
    "style",
    "drawing",
    "painting",
    "shape",
]
RESOLUTION = 32


@dataclass
class TinySana:
    """Where :func:`build_tiny_sana` saved the model."""

    diffusers_dir: Path
    resolution: int = RESOLUTION
    single_file: Path | None = None

    @property
    def config_dir(self) -> Path:
        return self.diffusers_dir


def tiny_tokenizer() -> Any:
    """A word-level fast tokenizer (pad 0, eos 1, bos 2, unk 3), lower-casing its input."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in [*WORDS, ","]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``SanaPipeline`` in memory (random weights from ``seed``)."""
    import torch
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=RESOLUTION // 2,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    torch.manual_seed(seed + 2)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


def build_tiny_sana(directory: str | Path, seed: int = 0) -> TinySana:
    """Build the tiny model and save it as a diffusers folder under ``directory``."""
    out = Path(directory) / "diffusers"
    build_tiny_pipeline(seed).save_pretrained(out)
    return TinySana(out)
