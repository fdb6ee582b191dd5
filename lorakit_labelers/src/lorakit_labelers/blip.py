"""The ``blip`` labeler: a one-sentence caption per image from BLIP
(``BlipForConditionalGeneration``), decoded by beam search so the same image always gets
the same caption."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.api import Labeler
from lorakit_labelers import runtime

if TYPE_CHECKING:
    from PIL import Image


class BlipCaptioner(Labeler):
    """Captions images with a BLIP captioning model."""

    batch_size = 16

    def __init__(
        self,
        model: str = "Salesforce/blip-image-captioning-base",
        prompt: str = "",
        max_new_tokens: int = 30,
        num_beams: int = 3,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.model_name = model
        self.prompt = prompt.strip()
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.device_option = device
        self.dtype_option = dtype
        self.model: Any = None
        self.processor: Any = None

    def setup(self) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        runtime.check_model("blip", self.model_name, ("blip",), "BLIP")
        self.device = runtime.pick_device("blip", self.device_option)
        dtype = runtime.pick_dtype(self.device, self.dtype_option)
        self.processor = runtime.load("blip", BlipProcessor, self.model_name)
        model = runtime.load("blip", BlipForConditionalGeneration, self.model_name, dtype=dtype)
        self.model = model.to(self.device).eval()

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        import torch

        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
        return [t.strip() for t in self.processor.batch_decode(output, skip_special_tokens=True)]

    def teardown(self) -> None:
        self.model = self.processor = None
