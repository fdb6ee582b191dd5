"""The ``qwen-vl`` labeler: captions from a Qwen2-VL, Qwen2.5-VL or Qwen3-VL chat model
(``AutoModelForImageTextToText``), asked ``prompt`` about each image through the model's
chat template.

Images of different sizes become different numbers of image tokens, so a batch is padded
on the left (the side generation continues from); the answer is what follows the prompt.
Images larger than ``max_pixels`` are scaled down to it before the model sees them (the
model's own limit applies when it is lower): a 12-megapixel photo would otherwise cost
about 15 000 tokens in Qwen2.5-VL.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.api import DataError, UsageError
from lorakit_labelers.generating import GeneratingCaptioner

if TYPE_CHECKING:
    from PIL import Image

#: The longest side over the shortest that Qwen-VL's image processors accept.
MAX_ASPECT = 200


class QwenVlCaptioner(GeneratingCaptioner):
    """Captions images by asking a Qwen-VL chat model to describe them."""

    name = "qwen-vl"
    what = "Qwen2-VL, Qwen2.5-VL or Qwen3-VL"
    model_loader = "AutoModelForImageTextToText"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
    gpu_dtype = "bfloat16"
    batch_size = 4

    def __init__(
        self,
        model: str,
        prompt: str,
        max_new_tokens: int = 256,
        num_beams: int = 1,
        max_pixels: int = 1024 * 1024,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        super().__init__(model, prompt, max_new_tokens, num_beams, device, dtype)
        self.max_pixels = max_pixels
        self.text = ""
        self.size: dict[str, int] = {}

    def prepare(self) -> None:
        if not self.processor.chat_template:
            raise UsageError(
                f"labeler {self.name}: {self.model_name} has no chat template "
                "(a base model? use its -Instruct version)"
            )
        self.processor.tokenizer.padding_side = "left"
        question = [{"type": "image"}, {"type": "text", "text": self.prompt}]
        self.text = self.processor.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        size = self.processor.image_processor.size
        longest = min(size["longest_edge"], self.max_pixels)
        self.size = {"shortest_edge": min(size["shortest_edge"], longest), "longest_edge": longest}

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        for image, path in zip(images, paths, strict=True):
            ratio = max(image.size) / min(image.size)
            if ratio > MAX_ASPECT:
                raise DataError(
                    f"{image.width}x{image.height}: its long side is {ratio:.0f} times its short "
                    f"side, over the {MAX_ASPECT}:1 Qwen-VL reads; crop it or move it out of "
                    "the folder",
                    where=path,
                )
        inputs = self.processor(
            images=images,
            text=[self.text] * len(images),
            size=self.size,
            padding=True,
            return_tensors="pt",
        )
        output = self.generate(inputs)
        return self.decode(output[:, inputs["input_ids"].shape[1] :])
