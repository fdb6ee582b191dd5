"""Describe an image by its dominant colours and its brightness, with PIL only.

The image is shrunk to 64x64 and reduced to a few representative colours (PIL's median-cut
quantizer, which is deterministic); each is named (red, orange, brown, ... gray, white) and
the names are ranked by how much of the picture they cover. The mean HSV value gives dark,
dim or bright; the mean saturation gives vivid colors (or monochrome for grays). Example: ``blue and white, bright``.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.api import Labeler

if TYPE_CHECKING:
    from PIL import Image

#: Hue ranges (degrees, upper bound excluded) and their names, for saturated colours.
HUES = (
    (15, "red"),
    (40, "orange"),
    (70, "yellow"),
    (165, "green"),
    (195, "cyan"),
    (255, "blue"),
    (320, "purple"),
    (345, "pink"),
    (360, "red"),
)


def colour_name(rgb: tuple[int, int, int]) -> str:
    """A plain English name for an RGB colour."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if value < 0.18:
        return "black"
    if saturation < 0.18:
        if value > 0.85:
            return "white"
        return "gray"
    degrees = hue * 360
    name = next(n for upper, n in HUES if degrees < upper)
    if name in ("red", "orange", "yellow") and value < 0.55 and degrees < 50:
        return "brown"
    return name


def dominant_colours(image: Image.Image, count: int, min_share: float) -> list[str]:
    """Up to ``count`` colour names covering at least ``min_share`` of the image each."""
    small = image.convert("RGB").resize((64, 64))
    quantized = small.quantize(colors=8, method=0)  # 0 = median cut
    palette = quantized.getpalette() or []
    shares: dict[str, float] = {}
    total = 64 * 64
    for pixels, index in quantized.getcolors() or []:
        assert isinstance(index, int)  # a "P" image's colours are palette indices
        r, g, b = palette[index * 3 : index * 3 + 3]
        name = colour_name((r, g, b))
        shares[name] = shares.get(name, 0.0) + pixels / total
    ranked = sorted(shares.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, share in ranked[:count] if share >= min_share]


def describe(image: Image.Image, count: int = 2, min_share: float = 0.1) -> str:
    """``"blue and white, bright"``: the dominant colours, then brightness and saturation."""
    from PIL import ImageStat

    names = dominant_colours(image, count, min_share)
    words = [" and ".join(names)] if names else []
    _, saturation, value = (v / 255 for v in ImageStat.Stat(image.convert("HSV")).mean)
    if value < 0.25:
        words.append("dark")
    elif value < 0.45:
        words.append("dim")
    elif value > 0.75:
        words.append("bright")
    if saturation > 0.6:
        words.append("vivid colors")
    elif saturation < 0.1 and names and set(names) <= {"black", "white", "gray"}:
        words.append("monochrome")
    return ", ".join(words)


class PaletteLabeler(Labeler):
    """Captions each image with its dominant colours and brightness."""

    batch_size = 64

    def __init__(self, colors: int = 2, min_share: float = 0.1) -> None:
        self.colors = colors
        self.min_share = min_share

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        return [describe(image, self.colors, self.min_share) for image in images]
