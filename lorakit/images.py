"""Image files: which names count as images, and how any of them becomes 8-bit RGB.

Training (the sd backend) and labeling read images through :func:`decode_rgb`, so a
caption describes exactly the pixels the model is trained on. PIL opens many modes;
``Image.convert("RGB")`` *clips* the wide ones (a 16-bit grayscale PNG comes out black
and white), so each mode is scaled here instead:

=====================  ==========================================================
mode                   8-bit value
=====================  ==========================================================
``I;16``, ``I;16B``,   ``round(v * 255 / 65535)`` (16-bit unsigned)
``I;16L``, ``I;16N``
``I``                  as 16-bit (PIL opens 16-bit PNG/TIFF data as ``I``);
                       values outside 0…65535 are clipped
``F``                  ``round(v * 255)``: 0.0 is black, 1.0 white, clipped
``CMYK``               ``(255 - C) * (255 - K) / 255`` per channel (PIL's conversion)
``1``, ``L``, ``P``,   PIL's own conversion (already 8-bit)
``RGB``, ``YCbCr``
=====================  ==========================================================

Transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, ``P`` or ``L``/``RGB``/16-bit
with a ``transparency`` entry) is composited over white: ``round(c * a / 255 + 255 *
(255 - a) / 255)``. EXIF orientation is applied first; an animation gives its first
frame. numpy and PIL are imported inside the function: importing this module is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

#: Extensions (lower case) of the files read as images, by training and by labeling.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def is_image_name(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _wide_to_8bit(image: Any) -> Any:
    """An ``(H, W)`` uint8 array of a 16-bit, 32-bit integer or float single-band image."""
    import numpy as np

    values = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(values.astype(np.float64), 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(values.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
    return np.rint(scaled).astype(np.uint8)


def _over_white(rgb: Any, alpha: Any) -> Any:
    """``rgb`` (H, W, 3 uint8) composited over white with ``alpha`` (H, W uint8)."""
    import numpy as np

    a = alpha.astype(np.float64)[..., None] / 255.0
    out = rgb.astype(np.float64) * a + 255.0 * (1.0 - a)
    return np.rint(out).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened (and loaded) PIL image as 8-bit RGB, by the rules of this module."""
    import numpy as np
    from PIL import Image as PILImage
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode in _SIXTEEN_BIT or mode == "F":
        gray = _wide_to_8bit(image)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        if isinstance(transparency, int) and mode != "F":
            alpha = np.where(np.asarray(image) == transparency, 0, 255).astype(np.uint8)
            rgb = _over_white(rgb, alpha)
        return PILImage.fromarray(rgb, "RGB")
    if mode in _ALPHA or transparency is not None:
        rgba = np.asarray(image.convert("RGBA"))
        return PILImage.fromarray(_over_white(rgba[..., :3], rgba[..., 3]), "RGB")
    return image if mode == "RGB" else image.convert("RGB")


def decode_rgb(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded, upright and 8-bit RGB (see the module doc).

    Raises ``OSError``/``ValueError``/``SyntaxError`` (and PIL's decompression-bomb error)
    for a file that is not a readable image, a truncated one included.
    """
    from PIL import Image as PILImage

    with PILImage.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, not later
        return to_rgb(opened)
