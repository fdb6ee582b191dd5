"""Writing generated clips: an H.264 ``.mp4`` (PyAV) and an animated ``.webp`` (pillow) for the
page, each written atomically."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from lorakit.api import atomic_path

#: frame rate of generated clips when nothing says otherwise (Wan generates at 16 fps)
DEFAULT_FPS = 16


def write_mp4(frames: list[Any], path: Path, fps: float = DEFAULT_FPS) -> Path:
    """PIL frames as H.264 (yuv420p: every player reads it; sides rounded down to even)."""
    from lorakit_sd.data.video import pyav

    av = pyav()

    width, height = frames[0].width // 2 * 2, frames[0].height // 2 * 2
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(str(fps)).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_image(image.convert("RGB").crop((0, 0, width, height)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_webp(frames: list[Any], path: Path, fps: float = DEFAULT_FPS) -> Path:
    """PIL frames as a looping animated WebP (lossless)."""
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="WEBP",
            save_all=True,
            append_images=frames[1:],
            duration=round(1000 / fps),
            loop=0,
            lossless=True,
        )
    return path
