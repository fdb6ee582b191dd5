"""Video clips as training samples: decoding with PyAV, frame sampling, frame buckets.

A video family (one whose ``frame_multiple`` is set: Wan's VAE compresses 4 frames into one,
so it trains on ``4k + 1`` frames) reads folders of clips (``.mp4``, ``.webm``, ``.mov``,
``.mkv``, ``.gif``) and still images. A still image is a one-frame clip. Each clip is decoded
once up front (:func:`probe`), so a file that cannot be decoded is named before training.

Frame sampling (``sd.video``), with ``n`` decoded frames at the clip's rate ``r`` (its
average frame rate) and the training rate ``fps`` (default ``r``):

- the clip at ``fps`` is the source frames ``s_j = floor(j · r / fps)`` for ``j = 0, 1, …``
  while ``s_j < n`` (frames dropped or repeated to change the rate); ``L`` is their number;
- its length ``F`` is the largest of ``sd.video.frames`` that is at most ``L`` (a clip shorter
  than the smallest is reported, not trained on);
- windows of ``F`` consecutive resampled frames start at ``floor(k · (L - F) / (c - 1))`` for
  ``k = 0 … c - 1`` with ``c = clips_per_video`` (musubi-tuner's "uniform" extraction; one
  window: the first frames), or, with ``frame_stride`` ``s``, at ``0, s, 2s, …`` up to
  ``L - F`` (musubi-tuner's "slide"), at most ``clips_per_video`` of them when it is set.

Every window is one sample bucketed over ``(frames, height, width)``. Decoding is bounded:
a frame larger than the image pixel budget is refused from the stream's header, at most
:data:`MAX_CLIP_FRAMES` frames are decoded per file, and each kept frame is resized into its
bucket as it is decoded, so memory holds one sample's frames at the bucket's size.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from lorakit.api import VIDEO_EXTENSIONS as CLIP_EXTENSIONS

#: Extensions (lower case) of the files read as clips by a video family (an animated GIF is
#: a clip there; for image families and labeling it is an image, its first frame).
VIDEO_EXTENSIONS = (*CLIP_EXTENSIONS, ".gif")
#: Frames decoded from one file at most (a header may claim anything).
MAX_CLIP_FRAMES = 10_000


def is_clip_name(path: str | Path) -> bool:
    """Whether ``path`` names a clip (one of :data:`VIDEO_EXTENSIONS`, any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class ClipInfo:
    """What decoding a clip found: its frame size, frames decoded and average rate."""

    width: int
    height: int
    frames: int
    fps: Fraction


class ClipError(ValueError):
    """A clip that cannot be read (the reason, one line)."""


def pyav() -> Any:
    """The ``av`` module, or a one-line error saying how to install it."""
    try:
        import av
    except ImportError:
        from lorakit.api import UsageError

        raise UsageError(
            "video clips need PyAV: pip install 'lorakit-sd[video]' (or pip install av)"
        ) from None
    return av


def probe(path: str | Path) -> ClipInfo:
    """Decode every frame of ``path`` once (nothing kept): its size, frame count and rate.

    Raises :class:`ClipError` when it has no video stream, its frames exceed the pixel budget,
    it holds more than :data:`MAX_CLIP_FRAMES` frames, or a frame cannot be decoded.
    """
    av = pyav()

    from lorakit.api import UsageError
    from lorakit.api import check_image_pixels as check_pixels

    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        raise ClipError(f"cannot read ({exc.strerror or exc})") from None
    if not regular:  # a FIFO would block the decoder for ever
        raise ClipError("not a regular file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError("no video stream")
            stream = container.streams.video[0]
            try:
                check_pixels(stream.width, stream.height, path)
            except UsageError as exc:
                raise ClipError(str(exc).split(": ", 1)[-1]) from None
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            count = 0
            for _ in container.decode(stream):
                count += 1
                if count > MAX_CLIP_FRAMES:
                    raise ClipError(f"more than {MAX_CLIP_FRAMES} frames")
            width, height = stream.width, stream.height
    except av.error.FFmpegError as exc:
        raise ClipError(f"cannot decode ({exc.strerror or type(exc).__name__})") from None
    except OSError as exc:
        raise ClipError(f"cannot read ({exc.strerror or exc})") from None
    if count == 0:
        raise ClipError("no frames")
    if not rate or rate <= 0:
        raise ClipError("no frame rate")
    return ClipInfo(width, height, count, Fraction(rate))


def resampled(count: int, rate: Fraction, fps: float | None) -> list[int]:
    """Source frame indices of a ``count``-frame clip at ``rate`` played at ``fps``:
    ``floor(j · rate / fps)`` while below ``count`` (every frame when ``fps`` is None)."""
    if fps is None:
        return list(range(count))
    step = Fraction(rate) / Fraction(str(fps))
    out: list[int] = []
    j = 0
    while (index := math.floor(j * step)) < count:
        out.append(index)
        j += 1
    return out


def windows(
    count: int,
    rate: Fraction,
    *,
    frames: list[int],
    fps: float | None = None,
    frame_stride: int | None = None,
    clips_per_video: int | None = None,
) -> list[tuple[int, ...]]:
    """The source frame indices of every sample cut from a clip (see the module's formulas);
    empty when the clip is shorter than the smallest of ``frames``."""
    source = resampled(count, rate, fps)
    length = len(source)
    fitting = [f for f in frames if f <= length]
    if not fitting:
        return []
    size = max(fitting)
    room = length - size
    if frame_stride:
        starts = list(range(0, room + 1, frame_stride))
        if clips_per_video:
            starts = starts[:clips_per_video]
    else:
        n = clips_per_video or 1
        starts = [0] if n == 1 else [k * room // (n - 1) for k in range(n)]
        starts = sorted(set(starts))
    return [tuple(source[s : s + size]) for s in starts]


def load_clip(
    path: str | Path,
    indices: tuple[int, ...],
    bucket: tuple[int, int],
    crop: tuple[int, int] | None = None,
) -> Any:
    """Frames ``indices`` of a clip as a ``[3, F, h, w]`` tensor in [-1, 1], each fitted to
    ``bucket`` (scaled to cover it, cropped at ``crop`` or the center) as it is decoded."""
    import numpy as np
    import torch

    from lorakit_sd.data.buckets import fit_image

    wanted: dict[int, int] = {}
    for index in indices:
        wanted[index] = wanted.get(index, 0) + 1
    last = max(indices)
    kept: dict[int, Any] = {}
    with pyav().open(str(path)) as container:
        stream = container.streams.video[0]
        for number, frame in enumerate(container.decode(stream)):
            if number in wanted:
                image = fit_image(frame.to_image().convert("RGB"), bucket, crop)
                kept[number] = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
            if number >= last:
                break
    missing = [i for i in wanted if i not in kept]
    if missing:
        raise ClipError(f"{path}: frame {missing[0]} could not be decoded")
    array = np.stack([kept[i] for i in indices])  # [F, h, w, 3]
    return torch.from_numpy(array).permute(3, 0, 1, 2).contiguous()


def item_pixels(item: Any, crop: tuple[int, int] | None = None) -> Any:
    """An item's pixels: ``[3, h, w]`` for an image of an image family, ``[3, F, h, w]`` for
    a clip or a still image (one frame) of a video family."""
    from lorakit_sd.data.buckets import load_pixels

    if not item.frames:
        return load_pixels(item.image, item.bucket, crop)
    if is_clip_name(item.image):
        return load_clip(item.image, item.frames, item.bucket, crop)
    return load_pixels(item.image, item.bucket, crop)[:, None]


def check_frames(frames: list[int], multiple: int, label: str) -> None:
    """Refuse frame counts a family's VAE cannot take (``k · multiple + 1``), naming the key."""
    from lorakit.api import ConfigError

    wrong = [f for f in frames if (f - 1) % multiple]
    if wrong:
        fits = ", ".join(str((f - 1) // multiple * multiple + 1) for f in wrong)
        raise ConfigError(
            f"{label} trains on {multiple}k+1 frames; {', '.join(map(str, wrong))} "
            f"is not (nearest below: {fits})",
            key="sd.video.frames",
        )


def clip_samples(path: str, video: Any) -> tuple[tuple[int, int] | None, list[Any], str]:
    """``(frame size, [frame indices of each sample], problem)`` of one clip under the
    ``sd.video`` settings; a one-frame clip is a still image (one one-frame sample)."""
    try:
        info = probe(path)
    except ClipError as exc:
        return None, [], f"{path}: {exc}"
    if info.frames == 1:
        return (info.width, info.height), [(0,)], ""
    found = windows(
        info.frames,
        info.fps,
        frames=video.frames,
        fps=video.fps,
        frame_stride=video.frame_stride,
        clips_per_video=video.clips_per_video,
    )
    if not found:
        at = f" at {video.fps:g} fps" if video.fps else ""
        have = len(resampled(info.frames, info.fps, video.fps))
        return (
            None,
            [],
            f"{path}: {have} frames{at}, shorter than the smallest of sd.video.frames "
            f"({min(video.frames)})",
        )
    return (info.width, info.height), found, ""
