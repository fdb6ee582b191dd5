"""Masked loss: per-image masks that weight the loss per latent pixel (kohya's masked loss).

A mask comes from a folder of mask images with the image's stem (``sd.conditioning_data_dir``,
kohya's ``conditioning_data_dir``; its red channel, white = learn, black = ignore, grey in
between) or from the image's own alpha channel (``sd.alpha_mask``; an image without one is
all learned). It is fitted to the image's bucket exactly as the image (the same scale, crop
and flip), brought to the latent's size by area averaging (``interpolate(mode="area")``) and
multiplies the squared error per latent element before the per-sample mean, as
sd-scripts' ``apply_masked_loss`` does (the mean is over every element, masked ones too).
It enters the loss through the draw's elementwise weight, so every model family (DDPM and
flow matching) trains with it unchanged. Cached latents carry their mask at latent size, and
the cache key names the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit_sd.data.buckets import fit_image

#: mask file extensions looked for beside a stem, in this order
MASK_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def find_mask(image: str, folder: Path, mask_dir: Path, tail: str = "") -> Path | None:
    """The mask of ``image`` (inside ``folder``): the same relative path and stem under
    ``mask_dir``, with any image extension (``tail``: after the stem, ``cat_0.png``). Edit
    datasets' control folders are laid out the same way."""
    relative = Path(image).resolve().relative_to(folder.resolve())
    relative = relative.with_name(relative.stem + tail + relative.suffix)
    for suffix in MASK_SUFFIXES:
        for candidate in (relative.with_suffix(suffix), relative.with_suffix(suffix.upper())):
            if (mask_dir / candidate).is_file():
                return mask_dir / candidate
    return None


def _mask_image(source: str) -> Any:
    """A mask as an 8-bit single-channel PIL image: ``alpha:<image>`` is the image's alpha
    (opaque when it has none), anything else a mask file's red channel."""
    from PIL import Image, ImageOps

    from lorakit.api import check_image_pixels

    alpha = source.startswith("alpha:")
    path = source.removeprefix("alpha:")
    with Image.open(path) as raw:
        check_image_pixels(*raw.size, where=path)  # the pixel budget, before decoding
        image = ImageOps.exif_transpose(raw)
        if not alpha:
            return image.convert("RGB").getchannel("R")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            return image.convert("RGBA").getchannel("A")
        return Image.new("L", image.size, 255)


def mask_size(source: str) -> tuple[int, int]:
    return tuple(_mask_image(source).size)


def load_mask(source: str, bucket: tuple[int, int], crop: tuple[int, int] | None = None) -> Any:
    """A mask as a ``[1, h, w]`` tensor in [0, 1], fitted to ``bucket`` as
    :func:`lorakit_sd.data.buckets.load_pixels` fits its image (``crop``: the same offset)."""
    import numpy as np

    fitted = fit_image(_mask_image(source), bucket, crop)
    array = np.asarray(fitted, dtype=np.float32) / 255.0
    return torch.from_numpy(array).clamp(0.0, 1.0)[None].contiguous()


def to_latent(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``[B, 1, H, W]`` masks at the latent's ``(h, w)``, by area averaging."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return torch.nn.functional.interpolate(mask, size=tuple(size), mode="area")


def apply_mask(draw: Any, mask: torch.Tensor, flip: torch.Tensor | None) -> None:
    """Make ``draw``'s elementwise loss weight include the batch's masks (``[B, 1, h, w]``,
    any size: brought to the latent's), mirrored where ``flip`` mirrored the image."""
    mask = mask.to(draw.noisy.device, torch.float32)
    if flip is not None:
        mask = torch.where(flip.to(mask.device)[:, None, None, None], mask.flip(-1), mask)
    mask = to_latent(mask, draw.noisy.shape[-2:])
    draw.weight = mask if draw.weight is None else draw.weight.float() * mask
