"""Bucket sizes and the resolution / bucket_step check.

``sd.resolution: 32`` with the default ``bucket_step`` (64) once made a zero-size bucket and
training died with ZeroDivisionError; now the config says what to change, in one line, and
bucket generation never makes a bucket smaller than ``bucket_step``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lorakit_sd.data.buckets import bucket_sizes, nearest_bucket

from lorakit.errors import ConfigError
from lorakit.testing import write_config


def _config(tmp_path: Path, sd: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_type": "image-generation",
        "base_model": str(tmp_path),
        "train_data_dir": str(tmp_path),
        "output_dir": str(tmp_path / "out"),
        "sd": sd,
    }


def _load(sd_plugins: Any, tmp_path: Path, **sd: Any) -> Any:
    from lorakit.config import load_config

    return load_config(data=_config(tmp_path, sd), registries=sd_plugins.registries)


@pytest.mark.parametrize(
    "sd",
    [
        {"resolution": 32},
        {"resolution": 100, "bucket_step": 8},
        {"resolution": 4, "bucket_step": 8},
    ],
)
def test_resolution_not_a_multiple_of_bucket_step_is_a_config_error(sd_plugins, tmp_path, sd):
    with pytest.raises(ConfigError) as info:
        _load(sd_plugins, tmp_path, **sd)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sd.bucket_step: ") and "sd.resolution" in message
    assert f"sd.resolution {sd['resolution']} must be a multiple of sd.bucket_step" in message


@pytest.mark.parametrize(
    "sd",
    [
        {"resolution": 32, "bucket_step": 8},
        {"resolution": 64},
        {"resolution": 48, "bucket": False},  # no buckets: bucket_step is not used
        {},  # the model's default resolution (512 / 1024)
    ],
)
def test_resolutions_that_fit_are_accepted(sd_plugins, tmp_path, sd):
    assert _load(sd_plugins, tmp_path, **sd).section.bucket_step == sd.get("bucket_step", 64)


def test_config_validate_names_keys_file_and_line(sd_plugins, tmp_path, capsys):

    from lorakit.cli import main

    path = write_config(tmp_path / "small.yaml", _config(tmp_path, {"resolution": 32}))
    with pytest.raises(SystemExit) as info:
        main(["config", "validate", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and "sd.bucket_step" in err and "sd.resolution 32" in err


def test_a_resolution_below_bucket_step_makes_no_bucket():
    with pytest.raises(ConfigError, match=r"sd\.resolution 32 is smaller than sd\.bucket_step"):
        bucket_sizes(32, 64)


def test_default_buckets_are_unchanged():
    """The usual SD1.5 settings give the same buckets as before the fix (caches stay valid)."""
    sizes = bucket_sizes(512, 64)
    assert (512, 512) in sizes and (256, 1024) in sizes and (1024, 256) in sizes
    assert len(sizes) == 17 and all(w * h <= 512 * 512 for w, h in sizes)


@settings(max_examples=200, deadline=None)
@given(
    step=st.sampled_from([4, 8, 16, 32, 64]),
    multiple=st.integers(1, 24),
    extra=st.integers(0, 63),
    low=st.none() | st.integers(1, 2048),
    high=st.none() | st.integers(1, 4096),
)
def test_buckets_are_never_empty_or_off_the_grid(step, multiple, extra, low, high):
    resolution = step * multiple + extra % step
    sizes = bucket_sizes(resolution, step, low, high)
    square = resolution // step * step
    assert (square, square) in sizes
    for w, h in sizes:
        assert w >= step and h >= step and w % step == 0 and h % step == 0
        assert w * h <= resolution * resolution
    for image in [(1, 1), (3000, 7), (7, 3000), (640, 480), (resolution, resolution)]:
        w, h = nearest_bucket(image, sizes)
        assert w > 0 and h > 0


def test_nearest_bucket_ignores_empty_buckets():
    assert nearest_bucket((64, 32), [(0, 0), (16, 8), (8, 8)]) == (16, 8)
    with pytest.raises(ValueError, match="no bucket"):
        nearest_bucket((64, 32), [(0, 0)])


@given(
    w=st.integers(8, 3000),
    h=st.integers(8, 3000),
    step=st.sampled_from([8, 32, 64]),
    resolution=st.sampled_from([256, 512, 1024]),
)
@settings(max_examples=200, deadline=None)
def test_no_upscale_buckets_never_enlarge_and_stay_within_the_area(w, h, step, resolution):
    from lorakit_sd.data.buckets import fit, no_upscale_bucket

    bw, bh = no_upscale_bucket((w, h), resolution, step)
    assert bw % step == 0 and bh % step == 0
    assert bw * bh <= max(resolution * resolution, step * max(bw, bh))
    if w >= step and h >= step:
        rw, rh, _, _ = fit((w, h), (bw, bh))
        assert rw <= w and rh <= h  # resized into the bucket without enlarging


def _items(sd_plugins, tmp_path, sizes, **sd):
    from lorakit_sd.data.dataset import build_items
    from lorakit_sd.testing import write_tiny_images

    from lorakit.config import load_config

    data = write_tiny_images(tmp_path / "data", len(sizes), sizes=sizes)
    raw = _config(tmp_path, {"resolution": 32, "bucket_step": 8, **sd})
    raw["train_data_dir"] = str(data)
    config = load_config(data=raw, registries=sd_plugins.registries)
    buckets = bucket_sizes(32, 8)
    return build_items(config, sd_plugins.registries, buckets, 32, print)[0]


def test_bucket_no_upscale_keeps_small_images_small(sd_plugins, tmp_path):
    sizes = [(16, 16), (20, 30), (64, 64)]
    default = [it.bucket for it in _items(sd_plugins, tmp_path / "a", sizes)]
    assert default[0] == (32, 32)  # a 16-pixel image enlarged to the 32-pixel bucket
    items = _items(sd_plugins, tmp_path / "b", sizes, bucket_no_upscale=True)
    assert [it.bucket for it in items] == [(16, 16), (16, 24), (32, 32)]
    assert all(it.resized[0] <= it.size[0] and it.resized[1] <= it.size[1] for it in items)


def test_random_crop_moves_the_crop_and_sdxl_time_ids_follow_it(sd_plugins, tmp_path):
    import torch
    from lorakit_sd.config import SDSection
    from lorakit_sd.data.buckets import load_pixels
    from lorakit_sd.data.dataset import SDDataset

    items = _items(sd_plugins, tmp_path, [(48, 24)])  # resized to 64x32, bucket 32x32... or wider
    item = items[0]
    assert item.resized[0] > item.bucket[0]
    assert SDSection(random_crop=True).latent_cache_enabled() is False
    dataset = SDDataset(items, [0], "sdxl", random_crop=True)
    torch.manual_seed(0)
    crops = set()
    for _ in range(12):
        sample = dataset[0]
        top, left = int(sample["time_ids"][2]), int(sample["time_ids"][3])
        crops.add((left, top))
        assert torch.equal(sample["pixels"], load_pixels(item.image, item.bucket, (left, top)))
    assert len(crops) > 1
    centered = SDDataset(items, [0], "sdxl")[0]
    assert (int(centered["time_ids"][3]), int(centered["time_ids"][2])) == item.crop
