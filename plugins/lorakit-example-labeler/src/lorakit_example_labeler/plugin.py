"""Entry point of lorakit-example-labeler: registers the ``palette`` labeler.

Built from plugins/lorakit-plugin-template; it uses only lorakit's public API
(``lorakit.api``: ``hookimpl``, ``LabelerSpec``, ``Labeler``). Nothing
heavy is imported here: the labeler's module loads when ``lorakit label`` asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lorakit.api import LabelerSpec, hookimpl

LORAKIT_PLUGIN_API = 2


class PaletteOptions(BaseModel):
    """``--option`` values of the palette labeler."""

    model_config = ConfigDict(extra="forbid")

    colors: int = Field(2, ge=1, le=6, description="most colour names per caption")
    min_share: float = Field(
        0.1, gt=0, le=1, description="least fraction of the image a named colour must cover"
    )


def make_palette_labeler(**options: Any) -> Any:
    """The factory lorakit calls with the validated options."""
    from lorakit_example_labeler.palette import PaletteLabeler

    return PaletteLabeler(**options)


@hookimpl
def register_labelers(register: Callable[[LabelerSpec], None]) -> None:
    register(
        LabelerSpec(
            name="palette",
            factory=make_palette_labeler,
            description="Dominant colours and brightness of each image (PIL only)",
            options_model=PaletteOptions,
        )
    )
