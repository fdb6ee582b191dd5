"""A tiny random-weight Z-Image model, built offline in about a second (tests, demos).

Z-Image's shapes, scaled down: a ``ZImageTransformer2DModel`` of width 32 (two heads of 16,
RoPE axes summing to the head width as (32, 48, 48) does for 128) with two main layers and
one noise / context refiner each; its timestep embedder is 1024 wide and its AdaLN input 256
whatever the width (fixed in diffusers), which sets the size floor (~0.3 M parameters). The
text encoder is a two-layer Qwen3 (the pipeline reads ``hidden_states[-2]``) behind a
word-level tokenizer with Qwen3's chat template; the VAE is FLUX.1's 16-channel kind (shift
0.1159, scale 0.3611) with two blocks; the scheduler is Z-Image's (fixed shift 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families.transformer_standin import TinyFolder, tiny_vae
from lorakit_sd.families.word_tokenizer import word_tokenizer

#: Qwen3's chat template as the pipeline uses it (one user turn, generation prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen3(vocab_size: int, width: int, seed: int) -> Any:
    import torch
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    return Qwen3Model(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=width * 2,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=0,
        )
    ).eval()


def tiny_transformer(seed: int, width: int) -> Any:
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=width,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    )


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``ZImagePipeline`` in memory (random weights from ``seed``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    tokenizer = word_tokenizer(("user\nassistant\n",), CHAT_TEMPLATE)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=tiny_vae(0.1159, 0.3611, seed + 1),
        text_encoder=tiny_qwen3(len(tokenizer), 32, seed + 3),
        tokenizer=tokenizer,
        transformer=tiny_transformer(seed + 2, 32),
    )


def build_tiny_zimage(directory: str | Path, seed: int = 0) -> TinyFolder:
    """Build the tiny model and save it as a diffusers folder under ``directory``."""
    out = Path(directory) / "diffusers"
    build_tiny_pipeline(seed).save_pretrained(out, safe_serialization=True)
    return TinyFolder(out)
