"""``sd.cache_to_disk``: a later run reuses the cache, and re-encodes exactly what changed.

Encodes are counted where they happen, in the models: global forward hooks (torch's
``register_module_forward_hook``) on diffusers' VAE ``Encoder`` (images: the batch rows it
receives) and on transformers' ``CLIPTextModel`` (captions: the rows of its input ids).
Runs of one step each share one output folder, so one cache folder (``output_dir/cache/``;
the earlier run's checkpoints are removed first, as a new run there requires), and change
one thing at a time: nothing, the VAE (one weight), the resolution, one image
file, one caption.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from sd_helpers import train_tiny

CAPTIONS = 4  # distinct captions of the four images; the empty caption is cached too


class Encodes:
    """Rows through the VAE encoder and the CLIP text model while installed."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def __call__(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        kind = type(module)
        if kind.__name__ == "Encoder" and kind.__module__.startswith("diffusers."):
            self.count["images"] += args[0].shape[0]
        elif kind.__name__ == "CLIPTextModel" and kind.__module__.startswith("transformers."):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.count["captions"] += ids.shape[0]


def _encodes(tmp_path: Path, model: Any, data: Path, **sd: Any) -> dict[str, int]:
    """One run in ``tmp_path/run``; the earlier run's checkpoints removed, as lorakit asks
    before a new run in a used output folder (its cache stays)."""
    shutil.rmtree(tmp_path / "run" / "checkpoints", ignore_errors=True)
    seen = Encodes()
    hook = torch.nn.modules.module.register_module_forward_hook(seen, with_kwargs=True)
    try:
        result, _ = train_tiny(
            tmp_path,
            model,
            data,
            max_steps=1,
            batch_size=4,
            trackers=[],
            export_formats=["diffusers"],
            output_dir=tmp_path / "run",
            sd={"cache_to_disk": True, **sd},
        )
    finally:
        hook.remove()
    assert result.steps == 1
    return {"images": seen.count["images"], "captions": seen.count["captions"]}


def _other_vae(model: Any, folder: Path) -> Any:
    """The same model but for one weight of the VAE's encoder (a copy of the folder)."""
    from diffusers import AutoencoderKL
    from lorakit_sd.families.unet_standin import TinyModel

    shutil.copytree(model.diffusers_dir, folder / "diffusers")
    vae = AutoencoderKL.from_pretrained(folder / "diffusers" / "vae")
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] += 0.5
    vae.save_pretrained(folder / "diffusers" / "vae", safe_serialization=True)
    return TinyModel("sd1", folder / "diffusers", model.single_file, model.config_dir)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from lorakit_sd.testing import write_tiny_images

    return write_tiny_images(tmp_path / "data", 4)


def test_a_second_run_reuses_the_cache_and_changes_re_encode_what_changed(
    tiny_models, tmp_path, data
):
    from lorakit_sd.testing import tiny_image

    model = tiny_models["sd1"]
    assert _encodes(tmp_path, model, data) == {"images": 4, "captions": CAPTIONS + 1}
    cache = tmp_path / "run" / "cache"
    assert len(list((cache / "latents").glob("*.safetensors"))) == 4
    assert len(list((cache / "text").glob("*.safetensors"))) == CAPTIONS + 1

    assert _encodes(tmp_path, model, data) == {"images": 0, "captions": 0}
    other = _other_vae(model, tmp_path / "other")
    assert _encodes(tmp_path, other, data) == {"images": 4, "captions": 0}
    assert _encodes(tmp_path, model, data, resolution=48) == {"images": 4, "captions": 0}

    tiny_image(9).save(data / "img_001.png")  # one image file changes, its caption does not
    assert _encodes(tmp_path, model, data) == {"images": 1, "captions": 0}

    path = data / "metadata.csv"
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[3][1] = "a new caption for the third image"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    assert _encodes(tmp_path, model, data) == {"images": 0, "captions": 1}
    assert _encodes(tmp_path, model, data) == {"images": 0, "captions": 0}
