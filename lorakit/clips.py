"""Video clips for labeling: which names are clips, and a clip's first frame as 8-bit RGB.

Video families train on clips (lorakit-sd decodes them with PyAV); ``lorakit label``
captions a clip by its first frame, and lists a clip that cannot be decoded as it lists an
unreadable image, before any training. Every frame is decoded once (so a clip broken halfway
is found), at most :data:`MAX_CLIP_FRAMES`, after the frame size is checked against the pixel
budget. PyAV (``av``) is imported inside the function: importing this module is free.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.images import check_pixels

if TYPE_CHECKING:
    from PIL import Image

#: Extensions (lower case) of the files read as clips (GIF is an image: its first frame).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv")
#: Frames decoded from one file at most (a header may claim anything).
MAX_CLIP_FRAMES = 10_000


def is_clip_name(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`VIDEO_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def regular_file(path: str | Path) -> bool:
    """Whether ``path`` is a regular file (links followed): what a decoder may open without
    blocking on a FIFO or a device."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def clip_first_frame(path: str | Path) -> Image.Image:
    """A clip's first frame as 8-bit RGB, after decoding every frame once.

    Raises ``ValueError`` naming what is wrong: PyAV missing, no video stream, a frame over
    the pixel budget, too many frames, or a frame that cannot be decoded.
    """
    try:
        import av
    except ImportError:
        raise ValueError("a video clip needs PyAV to read (pip install av)") from None
    if not regular_file(path):  # a FIFO would block the decoder for ever
        raise ValueError("not a regular file")
    first = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            check_pixels(stream.width, stream.height, path)
            for count, frame in enumerate(container.decode(stream), start=1):
                if first is None:
                    first = frame.to_image().convert("RGB")
                if count > MAX_CLIP_FRAMES:
                    raise ValueError(f"more than {MAX_CLIP_FRAMES} frames")
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode the clip ({exc.strerror or type(exc).__name__})") from None
    if first is None:
        raise ValueError("no frames")
    return first
