"""Clips made in the tests with PyAV: a square moving over a background, frame by frame."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

#: container suffix -> (codec, pixel format, options): lossless or near-lossless where the
#: format allows (qtrle is exact RGB; x264 / VP9 lossless keep YUV 4:4:4 exactly)
CODECS = {
    ".mov": ("qtrle", "rgb24", {}),
    ".mp4": ("libx264", "yuv444p", {"qp": "0", "preset": "ultrafast"}),
    ".webm": ("libvpx-vp9", "yuv444p", {"lossless": "1", "deadline": "realtime"}),
    ".gif": ("gif", "rgb8", {}),
}
COLORS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]


def moving_square(index: int, width: int = 32, height: int = 32, color: int = 0) -> np.ndarray:
    """Frame ``index``: black, with an 8-pixel square of ``COLORS[color]`` whose left edge is
    at ``2 · index mod (width - 8)`` and top at ``height / 4``."""
    frame = np.zeros((height, width, 3), np.uint8)
    left = (2 * index) % (width - 8)
    top = height // 4
    frame[top : top + 8, left : left + 8] = COLORS[color % len(COLORS)]
    return frame


def write_clip(
    path: Path, frames: int, fps: int = 8, width: int = 32, height: int = 32, color: int = 0
) -> Path:
    """A clip of ``frames`` :func:`moving_square` frames at ``fps``, codec by suffix."""
    import av

    codec, pix_fmt, options = CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            image = moving_square(i, width, height, color)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
