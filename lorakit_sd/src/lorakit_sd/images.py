"""Opening training images: EXIF orientation, RGB, and a full decode check up front.

Every image is decoded once before training starts, so a truncated or corrupt file is
reported (by name) before the first step instead of failing the run halfway.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def open_rgb(path: str | Path) -> Any:
    """The image at ``path``, upright (EXIF) and RGB (transparency over white)."""
    from PIL import Image, ImageOps

    with Image.open(path) as raw:
        image = ImageOps.exif_transpose(raw)
        image.load()
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def check_image(path: str | Path) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` for a readable image, else ``(None, reason)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = open_rgb(path)
    except UnidentifiedImageError:
        return None, "not an image PIL can read"
    except Image.DecompressionBombError as exc:
        return None, f"too large ({exc})"
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"cannot decode ({exc})"
    if min(image.size) < 8:
        return None, f"too small ({image.size[0]}x{image.size[1]})"
    return image.size, None


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (cache keys and the dataset fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
