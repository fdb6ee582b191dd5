"""The Qwen2-VL processor of ``QwenImageEditPipeline`` where torchvision is missing.

transformers' ``Qwen2VLProcessor`` carries a video processor that needs torchvision even
when only images are processed, so ``QwenImageEditPipeline.from_pretrained`` cannot load its
``processor/`` without it. Its image processor has a PIL version, which transformers picks
when torchvision is missing: the pipeline class returned here loads the processor from its
image processor and tokenizer alone (images work, videos are never asked for).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def images_only() -> Any:
    """``Qwen2VLProcessor`` without its video part (the same class name and module, so a
    saved pipeline's ``model_index.json`` still names transformers' class)."""
    from transformers import Qwen2VLProcessor

    parts = [a for a in Qwen2VLProcessor.get_attributes() if a != "video_processor"]
    return type(
        "Qwen2VLProcessor",
        (Qwen2VLProcessor,),
        {"get_attributes": classmethod(lambda _: parts), "__module__": Qwen2VLProcessor.__module__},
    )


@functools.cache
def pipeline_class() -> Any:
    """``QwenImageEditPipeline``, loading its processor images-only without torchvision."""
    from diffusers import QwenImageEditPipeline
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return QwenImageEditPipeline

    class ImagesOnly(QwenImageEditPipeline):
        @classmethod
        def from_pretrained(cls, source: Any, **kwargs: Any) -> Any:
            if "processor" not in kwargs:
                local = kwargs.get("local_files_only")
                kwargs["processor"] = images_only().from_pretrained(
                    source, subfolder="processor", local_files_only=local
                )
            return super().from_pretrained(source, **kwargs)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = QwenImageEditPipeline.__name__
    return ImagesOnly
