"""Entry point of lorakit-labelers: registrations only; nothing heavy is imported here."""

from __future__ import annotations

from collections.abc import Callable

from lorakit.api import LabelerSpec, hookimpl, lazy
from lorakit_labelers.options import (
    BlipOptions,
    ClipOptions,
    FilenameOptions,
    Florence2Options,
    QwenVlOptions,
    SidecarOptions,
)

LORAKIT_PLUGIN_API = 2


@hookimpl
def register_labelers(register: Callable[[LabelerSpec], None]) -> None:
    register(
        LabelerSpec(
            name="clip",
            factory=lazy("lorakit_labelers.clip:ClipTagger"),
            description="Tags from a vocabulary, ranked by CLIP image-text similarity",
            options_model=ClipOptions,
        )
    )
    register(
        LabelerSpec(
            name="blip",
            factory=lazy("lorakit_labelers.blip:BlipCaptioner"),
            description="One-sentence captions from a BLIP captioning model",
            options_model=BlipOptions,
        )
    )
    register(
        LabelerSpec(
            name="florence2",
            factory=lazy("lorakit_labelers.florence2:Florence2Captioner"),
            description="Captions from Florence-2, asked a task such as <DETAILED_CAPTION>",
            options_model=Florence2Options,
        )
    )
    register(
        LabelerSpec(
            name="qwen-vl",
            factory=lazy("lorakit_labelers.qwen_vl:QwenVlCaptioner"),
            description="Captions from a Qwen2-VL/2.5-VL/3-VL chat model, asked a prompt",
            options_model=QwenVlOptions,
        )
    )
    register(
        LabelerSpec(
            name="filename",
            factory=lazy("lorakit_labelers.simple:FilenameLabeler"),
            description="Caption from the file name (separators to spaces, numbering dropped)",
            options_model=FilenameOptions,
        )
    )
    register(
        LabelerSpec(
            name="sidecar",
            factory=lazy("lorakit_labelers.simple:SidecarLabeler"),
            description="Caption from the .txt file next to each image",
            options_model=SidecarOptions,
        )
    )
