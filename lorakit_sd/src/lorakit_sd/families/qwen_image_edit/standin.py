"""A tiny random-weight Qwen-Image-Edit model, built offline (tests, demos).

Qwen-Image's tiny parts (:mod:`lorakit_sd.families.qwen_image.standin`) in
``QwenImageEditPipeline``, with the processor the pipeline encodes the instruction and the
input image through: a PIL ``Qwen2VLImageProcessor`` scaling every image to 56×56 pixels
(4 vision tokens after the 2×2 merge) and the word-level tokenizer, which also knows the
vision tokens. The pipeline drops the first 64 tokens of its prompt template (the system
prompt up to ``<|vision_start|>``); ``user's`` is one token here so that the prefix is 64
tokens, as it is for the real tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families.qwen_image.standin import (
    SCHEDULER,
    tiny_qwen_vl,
    tiny_transformer,
    tiny_vae,
)
from lorakit_sd.families.transformer_standin import TinyFolder
from lorakit_sd.families.word_tokenizer import word_tokenizer

#: QwenImageEditPipeline's prompt template (``prompt_template_encode``)
TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should alter "
    "or modify the image. Generate a new image that meets the user's requirements while "
    "maintaining consistency with the original input where appropriate.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
VISION = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
#: the image side the tiny processor scales every image to (patches of 14, merged 2x2)
VISION_SIDE = 56


class TinyQwenImageEdit(TinyFolder):
    """Where :func:`build_tiny_qwen_image_edit` saved the model."""

    def load(self) -> Any:
        from lorakit_sd.families.qwen_image_edit.processor import pipeline_class

        return pipeline_class().from_pretrained(self.diffusers_dir)


def edit_tokenizer() -> Any:
    """The tiny word-level tokenizer, with the vision tokens and ``user's`` as one piece."""
    from tokenizers import AddedToken

    template = TEMPLATE
    for token in VISION:
        template = template.replace(token, "")
    tokenizer = word_tokenizer((template.replace("{}", ""),))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *VISION]}
    )
    tokenizer.add_tokens([AddedToken("user's", normalized=False)])
    return tokenizer


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``QwenImageEditPipeline`` in memory (random weights from ``seed``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline
    from transformers import Qwen2VLImageProcessorPil

    from lorakit_sd.families.qwen_image_edit.processor import images_only

    tokenizer = edit_tokenizer()
    area = VISION_SIDE * VISION_SIDE
    processor = images_only()(
        image_processor=Qwen2VLImageProcessorPil(
            size={"shortest_edge": area, "longest_edge": area}
        ),
        tokenizer=tokenizer,
    )
    encoder = tiny_qwen_vl(len(tokenizer), 32, seed + 3)
    ids = tokenizer.convert_tokens_to_ids
    encoder.config.image_token_id = ids("<|image_pad|>")
    encoder.config.vision_start_token_id = ids("<|vision_start|>")
    encoder.config.vision_end_token_id = ids("<|vision_end|>")
    return QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=tiny_vae(seed + 1, res_blocks=1),  # it encodes input images at ~1024² pixels
        text_encoder=encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=tiny_transformer(seed + 2, 32),
    )


def build_tiny_qwen_image_edit(directory: str | Path, seed: int = 0) -> TinyQwenImageEdit:
    """Build the tiny model and save it as a diffusers folder under ``directory``."""
    out = Path(directory) / "diffusers"
    build_tiny_pipeline(seed).save_pretrained(out, safe_serialization=True)
    return TinyQwenImageEdit(out)
