"""The ``mylabeler`` labeler for ``lorakit label``.

lorakit imports this module through the ``lorakit`` entry point in pyproject.toml and calls
``register_labelers``. Keep the top of the module light: import heavy libraries (torch,
transformers) inside ``setup``, so ``lorakit --help`` stays fast.

Replace ``MyLabeler.label`` with your own captioning; the rest is the wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from lorakit.api import Labeler, LabelerSpec, hookimpl

#: The lorakit plugin API this package is written for.
LORAKIT_PLUGIN_API = 2

if TYPE_CHECKING:
    from PIL import Image


class MyOptions(BaseModel):
    """What ``--option KEY=VALUE`` accepts; lorakit validates it before calling the factory."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(
        0.05, ge=0, le=1, description="how far from 1:1 still counts as square"
    )


class MyLabeler(Labeler):
    """Captions each image with its orientation: landscape, portrait or square."""

    batch_size = 16  # images per label() call; --batch-size overrides it

    def __init__(self, tolerance: float = 0.05) -> None:
        # Called with the validated options. Keep it cheap: load models in setup().
        self.tolerance = tolerance

    def setup(self) -> None:
        """Load models here (once, and only when there are images to label)."""

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        """One caption per image. ``images`` are RGB PIL images; ``paths`` their files."""
        captions = []
        for image in images:
            ratio = image.width / image.height
            if abs(ratio - 1) <= self.tolerance:
                captions.append("a square picture")
            elif ratio > 1:
                captions.append("a landscape picture")
            else:
                captions.append("a portrait picture")
        return captions

    def teardown(self) -> None:
        """Free what setup() loaded (called even when labeling failed)."""


@hookimpl
def register_labelers(register: Callable[[LabelerSpec], None]) -> None:
    register(
        LabelerSpec(
            name="mylabeler",
            factory=MyLabeler,
            description="Orientation of each image: landscape, portrait or square",
            options_model=MyOptions,
        )
    )
