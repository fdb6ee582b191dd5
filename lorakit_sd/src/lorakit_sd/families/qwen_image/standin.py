"""A tiny random-weight Qwen-Image model, built offline in about a second (tests, demos).

Qwen-Image's shapes, scaled down with their ratios kept: a two-block dual-stream
``QwenImageTransformer2DModel`` (patch 2, 64 packed channels in, 16 out, RoPE axes summing
to the head width as (16, 56, 56) does for 128), an ``AutoencoderKLQwenImage`` with the
real downsampling (8x, ``dim_mult`` [1, 2, 4, 4]) and per-channel latent mean / std, a
two-layer ``Qwen2_5_VLForConditionalGeneration`` (with a one-block vision tower, as the real
encoder has one) and Qwen-Image's own flow-matching scheduler config (dynamic shift,
``max_shift`` 0.9 at 8192 tokens).

The pipeline drops the first 34 tokens of its prompt template (the system prompt,
``prompt_template_encode_start_idx``): the word-level tokenizer of
:mod:`lorakit_sd.families.word_tokenizer` splits the template as Qwen2's does, so its prefix
is exactly 34 tokens, as it is for the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families.transformer_standin import TinyFolder
from lorakit_sd.families.word_tokenizer import word_tokenizer

#: QwenImagePipeline's prompt template (``prompt_template_encode``)
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
#: Qwen-Image's scheduler config (``Qwen/Qwen-Image``'s scheduler_config.json)
SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}


def tiny_tokenizer() -> Any:
    """The word-level tokenizer over the template's words (:mod:`..word_tokenizer`)."""
    return word_tokenizer((TEMPLATE.replace("{}", ""),))


def tiny_qwen_vl(vocab_size: int, width: int, seed: int) -> Any:
    """A two-layer Qwen2.5-VL (text width ``width``, a one-block vision tower)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": width,
            "intermediate_size": width * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": width,
            "fullatt_block_indexes": [0],
        },
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_vae(seed: int, res_blocks: int = 2) -> Any:
    """``res_blocks`` 2 as released (the layout diffusers converts Wan files to); 1 encodes
    twice as fast (the edit pipeline encodes its input image at about 1024² pixels)."""
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=res_blocks,
        temperal_downsample=[False, True, True],
    )


def tiny_transformer(seed: int, width: int) -> Any:
    import torch
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=width,
        axes_dims_rope=(4, 6, 6),
    )


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``QwenImagePipeline`` in memory (random weights from ``seed``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    tokenizer = tiny_tokenizer()
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=tiny_vae(seed + 1),
        text_encoder=tiny_qwen_vl(len(tokenizer), 32, seed + 3),
        tokenizer=tokenizer,
        transformer=tiny_transformer(seed + 2, 32),
    )


def build_tiny_qwen_image(directory: str | Path, seed: int = 0) -> TinyFolder:
    """Build the tiny model and save it as a diffusers folder under ``directory``."""
    out = Path(directory) / "diffusers"
    build_tiny_pipeline(seed).save_pretrained(out, safe_serialization=True)
    return TinyFolder(out)
