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

A pixel budget bounds the work a small file can ask for: an image whose header says it has
more than :func:`max_pixels` pixels (8192 × 8192, 67 million, unless
``LORAKIT_MAX_IMAGE_PIXELS`` says otherwise) is refused with :class:`ImageTooLarge` before a
byte of it is decoded (a 0.5 MB PNG can claim 10 000 × 10 000). The arithmetic above runs a
block of rows at a time, in 16- and 32-bit integers (exact: none of its divisions can land on
a half) and, for ``F`` images, float32: no float64 copy of an image is ever made.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

#: Extensions (lower case) of the files read as images, by training and by labeling.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: The default pixel budget: 8192 × 8192 (67 million pixels).
MAX_PIXELS = 8192 * 8192
#: Rows composited at a time (bounds the integer scratch buffers).
_ROWS = 512

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def is_image_name(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


class ImageTooLarge(UsageError, ValueError):
    """An image's header claims more pixels than the budget (:func:`max_pixels`): a
    ``ValueError`` to the readers that skip unreadable images, one line (exit 2) elsewhere."""


def max_pixels() -> int:
    """The pixel budget: ``LORAKIT_MAX_IMAGE_PIXELS`` (a whole number), else :data:`MAX_PIXELS`."""
    text = os.environ.get("LORAKIT_MAX_IMAGE_PIXELS", "").strip().replace("_", "")
    return int(text) if text.isdigit() and int(text) > 0 else MAX_PIXELS


def check_pixels(width: int, height: int, where: str | Path | None = None) -> None:
    """Raise :class:`ImageTooLarge` (naming ``where``) when ``width × height`` is over the
    budget."""
    budget = max_pixels()
    if width * height > budget:
        raise ImageTooLarge(
            f"{width}x{height} is {width * height} pixels, over the pixel budget of {budget} "
            "(LORAKIT_MAX_IMAGE_PIXELS raises it)",
            where=where,
        )


def _rows(height: int) -> range:
    return range(0, height, _ROWS)


def _wide_to_8bit(image: Any) -> Any:
    """An ``(H, W)`` uint8 array of a 16-bit, 32-bit integer or float single-band image."""
    import numpy as np

    values = np.asarray(image)
    out = np.empty(values.shape, np.uint8)
    for top in _rows(values.shape[0]):
        block = values[top : top + _ROWS]
        if image.mode == "F":
            scaled = np.clip(block.astype(np.float32), 0.0, 1.0) * np.float32(255.0)
            out[top : top + _ROWS] = np.rint(scaled)
        else:  # round(v * 255 / 65535) == (v * 255 + 32767) // 65535 (never a tie)
            wide = np.clip(block, 0, 65535).astype(np.uint32)
            out[top : top + _ROWS] = (wide * 255 + 32767) // 65535
    return out


def _over_white(rgb: Any, alpha: Any) -> Any:
    """``rgb`` (H, W, 3 uint8) composited over white with ``alpha`` (H, W uint8).

    ``round((c * a + 255 * (255 - a)) / 255)`` in 16-bit integers (at most 65 152).
    """
    import numpy as np

    out = np.empty(rgb.shape, np.uint8)
    for top in _rows(rgb.shape[0]):
        a = alpha[top : top + _ROWS, :, None].astype(np.uint16)
        c = rgb[top : top + _ROWS].astype(np.uint16)
        out[top : top + _ROWS] = (c * a + 255 * (255 - a) + 127) // 255
    return out


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

    Raises ``OSError``/``ValueError``/``SyntaxError`` for a file that is not a readable
    image, a truncated one included, and :class:`ImageTooLarge` (a ``ValueError``) for one
    over the pixel budget.
    """
    from PIL import Image as PILImage

    with warnings.catch_warnings():  # the budget below is the check; PIL's own is a backstop
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        try:
            opened = PILImage.open(path)
        except PILImage.DecompressionBombError as exc:  # PIL's limit is above the default
            raise ImageTooLarge(f"{exc} (PIL's decompression-bomb limit)") from None
        with opened:
            check_pixels(*opened.size)  # from the header, before a byte is decoded
            opened.load()  # decode now: a truncated file fails here, not later
            return to_rgb(opened)
