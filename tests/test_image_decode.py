"""lorakit.images.decode_rgb: every PIL mode to 8-bit RGB by scaling, checked against numpy.

Each expected array is computed here from the pixel values written, with numpy (bit-depth
scaling ``v * 255 / max``, compositing over white, naive CMYK), never from lorakit's output.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lorakit import labeling
from lorakit.images import IMAGE_EXTENSIONS, decode_rgb, to_rgb

H, W = 6, 8


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


SIXTEEN = np.linspace(0, 64000, H * W).astype(np.uint16).reshape(H, W)
EIGHT = np.arange(H * W * 4, dtype=np.uint8).reshape(H, W, 4) * 5
ALPHA = np.linspace(0, 255, H * W).astype(np.uint8).reshape(H, W)


def _cases() -> list[tuple[str, str, object, np.ndarray]]:
    scaled16 = np.rint(SIXTEEN.astype(np.float64) * 255 / 65535).astype(np.uint8)
    floats = (SIXTEEN / 64000).astype(np.float32)
    cmyk = EIGHT.astype(np.float64)
    naive = np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255).astype(np.uint8)
    la = np.stack([EIGHT[..., 0], ALPHA], axis=2)
    return [
        ("I;16", "png", lambda: Image.fromarray(SIXTEEN), _rgb(scaled16)),
        (
            "I;16B",
            "tiff",
            lambda: Image.frombytes("I;16B", (W, H), SIXTEEN.astype(">u2").tobytes()),
            _rgb(scaled16),
        ),
        ("I", "tiff", lambda: Image.fromarray(SIXTEEN.astype(np.int32)), _rgb(scaled16)),
        (
            "F",
            "tiff",
            lambda: Image.fromarray(floats),
            _rgb(np.rint(np.clip(floats.astype(np.float64), 0, 1) * 255).astype(np.uint8)),
        ),
        ("CMYK", "tiff", lambda: Image.fromarray(EIGHT, "CMYK"), naive),
        (
            "LA",
            "png",
            lambda: Image.fromarray(la, "LA"),
            _over_white(_rgb(EIGHT[..., 0]), ALPHA),
        ),
    ]


@pytest.mark.parametrize("mode, ext, make, want", _cases(), ids=[c[0] for c in _cases()])
def test_each_mode_decodes_to_scaled_8bit_rgb(tmp_path, mode, ext, make, want):
    path = tmp_path / f"x.{ext}"
    make().save(path)
    with Image.open(path) as check:
        assert check.mode == mode  # the file really is in the mode under test
    got = decode_rgb(path)
    assert got.mode == "RGB" and got.size == (W, H)
    assert np.abs(np.asarray(got).astype(int) - want.astype(int)).max() <= 1
    # the labelers read the very same pixels
    assert np.array_equal(np.asarray(labeling.read_image(path)), np.asarray(got))


def test_sixteen_bit_gray_keeps_its_mid_tones(tmp_path):
    """A 16-bit photo is not reduced to black and white (what convert("RGB") does)."""
    Image.fromarray(np.full((H, W), 52685, np.uint16)).save(tmp_path / "g.png")
    got = np.asarray(decode_rgb(tmp_path / "g.png"))
    assert set(np.unique(got)) == {round(52685 * 255 / 65535)}  # 205


def test_palette_with_transparency_and_pa(tmp_path):
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (253 * 3)
    index = (np.arange(H * W) % 3).reshape(H, W).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette)
    image.save(tmp_path / "p.png", transparency=0)
    colours = np.array(palette[:9], np.uint8).reshape(3, 3)
    want = colours[index]
    want[index == 0] = 255  # the transparent entry over white
    assert np.array_equal(np.asarray(decode_rgb(tmp_path / "p.png")), want)

    pa = Image.new("PA", (W, H))
    pa.putpalette(palette)
    pa.putdata([(int(i), int(a)) for i, a in zip(index.ravel(), ALPHA.ravel(), strict=True)])
    got = np.asarray(to_rgb(pa))
    assert np.abs(got.astype(int) - _over_white(colours[index], ALPHA).astype(int)).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    pixels = EIGHT[..., :3]
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    Image.fromarray(pixels, "RGB").save(tmp_path / "o.png", exif=exif)
    assert np.array_equal(np.asarray(decode_rgb(tmp_path / "o.png")), np.rot90(pixels, k=-1))


def test_the_sd_backend_trains_on_the_same_pixels(tmp_path):
    """lorakit_sd's loader and the labelers share the decoder (and the extension list)."""
    from lorakit_sd.data import images, readers

    from lorakit import api

    Image.fromarray(SIXTEEN).save(tmp_path / "a.PNG")
    (tmp_path / "b.txt").write_text("not an image")
    want = _rgb(np.rint(SIXTEEN.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert np.array_equal(np.asarray(images.open_rgb(tmp_path / "a.PNG")), want)
    assert api.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert [p.name for p in readers.image_files(tmp_path)] == ["a.PNG"]
    assert labeling.find_images(tmp_path) == ["a.PNG"]
