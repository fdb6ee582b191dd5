"""From unlabeled images to a trained LoRA on the command line: ``lorakit label`` with the
``clip`` and ``blip`` labelers (tiny random-weight models built offline, passed as
``--option model=FOLDER``), then ``lorakit train`` of the sd backend from the metadata.csv
each wrote, and the LoRA loaded with diffusers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from sd_helpers import cli

from lorakit.testing import write_config

pytest.importorskip("lorakit_labelers.testing")

TRIGGER = "sks_shape"
LABELERS = {
    # Random weights give low similarities: keep the best three tags of every image.
    "clip": ["-o", "threshold=-1", "-o", "top_k=3"],
    # Short greedy captions: quick, and well inside the 77 tokens the text encoder reads.
    "blip": ["-o", "max_new_tokens=8", "-o", "num_beams=1"],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny SD1 stand-in to train and the tiny CLIP and BLIP labelers' folders."""
    from lorakit_labelers.testing import build_tiny_blip, build_tiny_clip
    from lorakit_sd.families.unet_standin import build_tiny_sd

    root = tmp_path_factory.mktemp("models")
    return {
        "sd1": build_tiny_sd(root / "sd1"),
        "clip": build_tiny_clip(root / "clip"),
        "blip": build_tiny_blip(root / "blip"),
    }


def _captions(folder: Path) -> dict[str, str]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["file_name", "text"]
        return {row["file_name"]: row["text"] for row in reader}


@pytest.mark.parametrize("labeler", sorted(LABELERS))
def test_label_then_train(models, tmp_path, labeler):
    from diffusers import StableDiffusionPipeline
    from lorakit_labelers.testing import write_sample_images
    from lorakit_sd.testing import tiny_config
    from sd_helpers import lora_keys, unet_output

    data = tmp_path / "data"
    images = write_sample_images(data, 4, size=40)
    code = cli(
        "label",
        data,
        "--labeler",
        labeler,
        "-o",
        f"model={models[labeler]}",
        *LABELERS[labeler],
        "--prefix",
        TRIGGER,
        "--no-progress",
    )
    assert code == 0
    captions = _captions(data)
    assert sorted(captions) == sorted(p.name for p in images)
    for text in captions.values():
        assert text.startswith(f"{TRIGGER}, ") and len(text) > len(TRIGGER) + 2, text

    sd1 = models["sd1"]
    output = tmp_path / "out"
    config = write_config(
        tmp_path / "train.yaml", tiny_config(sd1, data, output, max_steps=4, output_name="labeled")
    )
    assert cli("train", "--config", config, "--no-progress") == 0
    record = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert record["status"] == "finished" and record["steps"] == 4
    assert math.isfinite(record["final_loss"])
    # The run trained on the labeler's captions: the resolved config points at that table.
    resolved = yaml.safe_load((output / "config.yaml").read_text(encoding="utf-8"))
    assert Path(resolved["train_data_dir"]) == data

    kohya = output / "labeled.safetensors"
    keys, metadata = lora_keys(kohya)
    assert metadata["ss_num_train_images"] == "4"
    pipe = StableDiffusionPipeline.from_pretrained(sd1.diffusers_dir)
    base, _ = unet_output(pipe, pipe.unet, [pipe.text_encoder], "sd1")
    pipe.load_lora_weights(str(kohya))
    adapted = [n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A")]
    assert len(adapted) == len([k for k in keys if k.endswith(".lora_down.weight")]) > 0
    tuned, _ = unet_output(pipe, pipe.unet, [pipe.text_encoder], "sd1")
    assert (tuned - base).abs().max().item() > 1e-6  # the trained LoRA changes the UNet
