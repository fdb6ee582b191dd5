"""The ``--option KEY=VALUE`` schemas of the built-in labelers (pydantic only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Device = Literal["auto", "cuda", "cpu"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class _ModelOptions(_Options):
    device: Device = Field("auto", description="auto (GPU when present), cuda or cpu")
    dtype: DType = Field("auto", description="auto: float16 on a GPU, float32 on the CPU")

    @field_validator("model", check_fields=False)
    @classmethod
    def _expand_home(cls, value: str) -> str:
        return os.path.expanduser(value) if value.startswith("~") else value


class ClipOptions(_ModelOptions):
    """Options of the ``clip`` tagger."""

    model: str = Field(
        "openai/clip-vit-base-patch32", description="hub id or folder of a CLIP model"
    )
    tags: Path | None = Field(
        None, description="file of tags, one a line (# comments); default: the shipped list"
    )
    template: str = Field("a photo of {}", description="text each tag is scored as; {} = tag")
    threshold: float = Field(
        0.2, ge=-1.0, le=1.0, description="least image-text cosine similarity a tag needs"
    )
    top_k: int = Field(8, ge=1, description="most tags per image, best first")

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("must contain {} once, where the tag goes")
        return value


class BlipOptions(_ModelOptions):
    """Options of the ``blip`` captioner."""

    model: str = Field(
        "Salesforce/blip-image-captioning-base", description="hub id or folder of a BLIP model"
    )
    prompt: str = Field("", description="text every caption starts with, e.g. 'a photo of'")
    max_new_tokens: int = Field(30, ge=1, le=512, description="longest caption, in tokens")
    num_beams: int = Field(3, ge=1, le=16, description="beam search width (1: greedy)")


#: Florence-2 tasks whose answer is plain text (the others answer with boxes).
FLORENCE2_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>")


#: What ``qwen-vl`` asks about each image unless told otherwise.
QWEN_VL_PROMPT = (
    "Describe this image in one paragraph: the main subject, its appearance, the setting "
    "and the style."
)


class _GenerateOptions(_ModelOptions):
    max_new_tokens: int = Field(256, ge=1, le=4096, description="longest caption, in tokens")
    num_beams: int = Field(1, ge=1, le=16, description="beam search width (1: greedy)")


class Florence2Options(_GenerateOptions):
    """Options of the ``florence2`` captioner."""

    model: str = Field(
        "florence-community/Florence-2-base",
        description="hub id or folder of a Florence-2 model in transformers' layout",
    )
    prompt: str = Field(
        "<DETAILED_CAPTION>", description="task token (<CAPTION>, <MORE_DETAILED_CAPTION>...)"
    )

    @field_validator("prompt")
    @classmethod
    def _task(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError(f"must not be empty (e.g. {FLORENCE2_TASKS[1]})")
        if value.startswith("<") and value not in FLORENCE2_TASKS:
            raise ValueError(f"a caption task is one of {', '.join(FLORENCE2_TASKS)}")
        return value


class QwenVlOptions(_GenerateOptions):
    """Options of the ``qwen-vl`` captioner."""

    model: str = Field(
        "Qwen/Qwen2.5-VL-3B-Instruct",
        description="hub id or folder of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL chat model",
    )
    prompt: str = Field(QWEN_VL_PROMPT, description="what the model is asked about each image")
    max_pixels: int = Field(
        1024 * 1024,
        ge=1024,
        description="larger images are scaled down to this many pixels for the model",
    )

    @field_validator("prompt")
    @classmethod
    def _asked(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class FilenameOptions(_Options):
    """Options of the ``filename`` labeler."""

    lowercase: bool = Field(False, description="lower-case the caption")


class SidecarOptions(_Options):
    """Options of the ``sidecar`` labeler."""

    extension: str = Field(".txt", description="extension of the caption file next to an image")
    missing: Literal["error", "empty", "filename"] = Field(
        "error", description="when an image has no caption file: error, empty or filename"
    )

    @field_validator("extension")
    @classmethod
    def _dotted(cls, value: str) -> str:
        value = value.strip()
        if not value or value == ".":
            raise ValueError("must be an extension such as .txt")
        return value if value.startswith(".") else f".{value}"
