"""Video data: clips made here with PyAV, decoded back, cut by ``sd.video`` as documented.

The frame sampler's choices are checked against the formulas written below (the ones
docs/video.md gives), and every decoded frame against the pixels written (exactly for the
lossless QuickTime RLE; within codec rounding for x264 / VP9 lossless 4:4:4 and GIF's 3-3-2
palette).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from sd_helpers import cli
from video_helpers import CODECS, moving_square, write_clip

from lorakit.testing import write_config

#: largest difference (0-255) allowed between a written and a decoded pixel, per container
TOLERANCE = {".mov": 0, ".mp4": 2, ".webm": 2, ".gif": 4}


def _decoded(tensor):
    """``[3, F, h, w]`` in [-1, 1] -> ``[F, h, w, 3]`` 0..255."""
    return ((tensor.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).round()


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_decoded_frames_are_the_pixels_written(tmp_path, suffix):
    from lorakit_sd.data.video import load_clip, probe

    path = write_clip(tmp_path / f"clip{suffix}", 10, fps=8)
    info = probe(path)
    assert (info.width, info.height, info.frames) == (32, 32, 10)
    if suffix != ".gif":  # GIF keeps delays in 1/100 s: 8 fps is stored as 12/100 s
        assert info.fps == 8
    picked = (0, 3, 4, 9)
    got = _decoded(load_clip(path, picked, (32, 32)))
    want = np.stack([moving_square(i) for i in picked]).astype(np.float64)
    assert np.abs(got - want).max() <= TOLERANCE[suffix]
    # the square moved: consecutive frames differ where it went
    assert np.abs(got[1] - got[2]).max() > 100


def _formula(n, rate, fps, frames, stride, clips):
    """docs/video.md: s_j = floor(j·r/fps) < n; F = max frames ≤ L; the window starts."""
    src = [math.floor(j * rate / fps) for j in range(10 * n) if math.floor(j * rate / fps) < n]
    length = len(src)
    size = max(f for f in frames if f <= length)
    if stride:
        starts = list(range(0, length - size + 1, stride))[: clips or None]
    else:
        c = clips or 1
        starts = (
            [0] if c == 1 else sorted({math.floor(k * (length - size) / (c - 1)) for k in range(c)})
        )
    return [tuple(src[s + i] for i in range(size)) for s in starts]


@pytest.mark.parametrize(
    "n,rate,fps,frames,stride,clips",
    [
        (40, 8, 4, [5, 9], None, 3),
        (40, 8, None, [5, 9, 33], None, None),
        (30, 24, 16, [9, 17], 3, None),
        (30, 24, 16, [9, 17], 2, 2),
        (12, 8, 16, [5, 9, 17], None, 4),
        (50, Fraction(30000, 1001), 16, [13, 25], None, 2),
    ],
)
def test_frame_sampler_follows_the_formula(n, rate, fps, frames, stride, clips):
    from lorakit_sd.data.video import windows

    got = windows(
        n, Fraction(rate), frames=frames, fps=fps, frame_stride=stride, clips_per_video=clips
    )
    assert got == _formula(n, rate, fps or rate, frames, stride, clips)
    assert all(len(w) == len(got[0]) and w[-1] < n for w in got)


def test_training_samples_are_the_formula_frames_of_the_clip(tmp_path, sd_plugins):
    """Through the dataset build the backend runs: a 40-frame 8 fps clip at 4 fps, windows of
    9, three per clip, decoded at the bucket; a still image is one frame."""
    from lorakit_sd.data.dataset import build_items
    from lorakit_sd.data.video import item_pixels
    from PIL import Image

    from lorakit.config import load_config

    data = tmp_path / "data"
    write_clip(data / "walk.mov", 40, fps=8)
    Image.fromarray(moving_square(3)).save(data / "still.png")
    (data / "walk.txt").write_text("a red square walking")
    (data / "still.txt").write_text("a red square")
    video = {"frames": [5, 9], "fps": 4, "clips_per_video": 3}
    cfg = {
        "task_type": "image-generation",
        "base_model": str(tmp_path),
        "train_data_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "sd": {"resolution": 32, "bucket_step": 16, "video": video},
    }
    config = load_config(data=cfg, registries=sd_plugins.registries, check_paths=False)
    buckets = [(32, 32)]
    items, index = build_items(config, sd_plugins.registries, buckets, 32, print, video=True)
    clips = [it for it in items if it.image.endswith(".mov")]
    assert [it.frames for it in clips] == _formula(40, 8, 4, [5, 9], None, 3)
    assert {it.group for it in clips} == {(9, 32, 32)}
    for it in clips:
        want = np.stack([moving_square(i) for i in it.frames]).astype(np.float64)
        assert np.abs(_decoded(item_pixels(it)) - want).max() == 0
    (still,) = [it for it in items if it.image.endswith(".png")]
    assert still.frames == (0,) and tuple(item_pixels(still).shape) == (3, 1, 32, 32)
    assert len(index) == 4


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    from lorakit_sd.families.wan.standin import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("wan"))


def _config(tmp_path, model, data, **sd):
    from lorakit_sd.testing import tiny_config

    return write_config(
        tmp_path / "run.yaml",
        tiny_config(model, data, tmp_path / "out", sd={"bucket_step": 16, **sd}),
    )


def test_bad_clips_are_one_line_each_before_the_model_loads(tmp_path, wan_model, capsys):
    data = tmp_path / "data"
    write_clip(data / "good.mp4", 12)
    write_clip(data / "short.webm", 4)
    (data / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)
    for name in ("good", "short", "broken"):
        (data / f"{name}.txt").write_text("a square")
    config = _config(tmp_path, wan_model, data, video={"frames": [5, 9]})
    assert cli("train", "--config", config, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "2 problem(s)" in err
    assert (
        f"{data / 'short.webm'}: 4 frames, shorter than the smallest of sd.video.frames (5)" in err
    )
    assert f"{data / 'broken.mp4'}: cannot decode" in err
    assert "good.mp4" not in err
    assert not (tmp_path / "out").exists()


def test_frame_counts_the_vae_cannot_take_are_refused(tmp_path, wan_model, capsys):
    data = tmp_path / "data"
    write_clip(data / "good.mp4", 12)
    (data / "good.txt").write_text("a square")
    config = _config(tmp_path, wan_model, data, video={"frames": [8, 9]})
    assert cli("train", "--config", config, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "sd.video.frames" in err and "4k+1" in err and "8 is not (nearest below: 5)" in err


def test_a_clip_over_the_pixel_budget_is_named_undecoded(tmp_path, monkeypatch):
    from lorakit_sd.data.video import ClipError, probe

    path = write_clip(tmp_path / "big.mp4", 3, width=64, height=64)
    monkeypatch.setenv("LORAKIT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ClipError, match="64x64 is 4096 pixels, over the pixel budget of 1000"):
        probe(path)


def test_an_image_family_names_a_clip_it_cannot_train(tmp_path, sd_plugins):
    from lorakit_sd.data.dataset import build_items
    from lorakit_sd.testing import write_tiny_images

    from lorakit.api import DataError
    from lorakit.config import load_config

    data = write_tiny_images(tmp_path / "data", 2)
    clip = write_clip(data / "extra.mp4", 5)
    with open(data / "metadata.csv", "a", encoding="utf-8") as f:
        f.write("extra.mp4,a clip\n")
    cfg = {
        "task_type": "image-generation",
        "base_model": str(tmp_path),
        "train_data_dir": str(data),
        "output_dir": str(tmp_path / "out"),
    }
    config = load_config(data=cfg, registries=sd_plugins.registries, check_paths=False)
    with pytest.raises(DataError, match=f"{clip}: a video clip"):
        build_items(config, sd_plugins.registries, None, 32, print)


def test_a_fifo_named_as_a_clip_is_refused_without_blocking(tmp_path):
    """A clip a metadata file names may be a FIFO: the decoder would wait for a writer for
    ever. Both readers (training's and labeling's) refuse it at once, in a subprocess that a
    timeout would kill if either blocked."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    code = (
        "import sys\n"
        "from lorakit_sd.data.video import ClipError, probe\n"
        "from lorakit.clips import clip_first_frame\n"
        "try:\n    probe(sys.argv[1])\nexcept ClipError as e:\n    print('probe:', e)\n"
        "try:\n    clip_first_frame(sys.argv[1])\nexcept ValueError as e:\n    print('label:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == ["probe: not a regular file", "label: not a regular file"]
