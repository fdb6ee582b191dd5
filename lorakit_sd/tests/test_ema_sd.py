"""EMA on the sd backend (issue 27, item 2): the kohya and diffusers files hold the average,
the -raw files the trained weights, the same bytes a run without EMA writes."""

from __future__ import annotations

import torch
from lorakit_sd.testing import write_tiny_images
from safetensors.torch import load_file
from sd_helpers import train_tiny


def test_sd_exports_hold_the_average_and_raw_files_equal_a_run_without_ema(tiny_models, tmp_path):
    model = tiny_models["sd1"]
    data = write_tiny_images(tmp_path / "data", 2)
    common = dict(max_steps=3, learning_rate=1e-2, batch_size=2)
    with_ema, _ = train_tiny(
        tmp_path, model, data, output_dir=tmp_path / "ema", ema={"decay": 0.5}, **common
    )
    plain, _ = train_tiny(tmp_path, model, data, output_dir=tmp_path / "lora", **common)
    names = {p.name for p in with_ema.outputs}
    assert names == {
        "ema.safetensors",
        "ema.diffusers.safetensors",
        "ema-raw.safetensors",
        "ema-raw.diffusers.safetensors",
    }
    for suffix in ("safetensors", "diffusers.safetensors"):
        raw = load_file(str(tmp_path / "ema" / f"ema-raw.{suffix}"))
        avg = load_file(str(tmp_path / "ema" / f"ema.{suffix}"))
        alone = load_file(str(tmp_path / "lora" / f"lora.{suffix}"))
        assert raw.keys() == avg.keys() == alone.keys()
        for key, value in alone.items():
            assert torch.equal(raw[key], value), key
        ups = [k for k in raw if "lora_up" in k or "lora_B" in k]
        assert max((avg[k] - raw[k]).abs().max().item() for k in ups) > 0
    # runs named like a checkpoint's state files keep those files whole (resume reads them)
    from safetensors import safe_open

    for run, state in (("ema", "ema.safetensors"), ("lora", "lora.safetensors")):
        path = tmp_path / run / "checkpoints" / "step-3" / state
        with safe_open(str(path), "pt") as f:
            keys, metadata = list(f.keys()), f.metadata() or {}
        assert run != "ema" or "ema" in metadata  # the average's state, not the export
        assert keys and all(not k.startswith("lora_unet_") for k in keys)  # parameter names
