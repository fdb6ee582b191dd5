"""Helpers shared by lorakit-sd's tests (imported as ``sd_helpers``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lorakit
from lorakit.testing import one_thread  # noqa: F401  (re-exported for the tests)


class Capture:
    """A test plugin that keeps the trained backend's modules after the run ends."""

    def __init__(self) -> None:
        self.backend: Any = None
        self.unet: Any = None
        self.text_encoders: list[Any] = []

    @lorakit.hookimpl
    def on_train_end(self, run: Any, outputs: list[str]) -> None:
        self.backend = run.backend
        self.unet = run.backend.unet
        self.text_encoders = list(run.backend.text_encoders)


def train_tiny(
    tmp_path: Path,
    model: Any,
    data: Path,
    *,
    single_file: bool = False,
    capture: bool = False,
    **overrides: Any,
) -> tuple[Any, Capture | None]:
    """Train ``model`` on ``data`` through the real engine; returns (RunResult, capture)."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import build_plugins, set_plugins

    extra: list[tuple[str, Any]] = [("sd", lorakit_sd.plugin)]
    cap = None
    if capture:
        cap = Capture()
        extra.append(("capture", cap))
    plugins = build_plugins(entry_points=False, extra=extra)
    set_plugins(plugins)
    try:
        output = overrides.pop("output_dir", tmp_path / "run")
        data_cfg = tiny_config(model, data, output, single_file=single_file, **overrides)
        config = load_config(data=data_cfg, registries=plugins.registries)
        result = train(config, plugins=plugins, progress=False)
    finally:
        set_plugins(None)
    return result, cap


def first_losses(output_dir: Path) -> list[float]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def _conditioning(pipe: Any, text_encoders: list[Any], family: str, captions: list[str]) -> Any:
    import torch
    from lorakit_sd.families.clip import encode_ids, tokenize

    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    with torch.no_grad():
        hidden, pooled = encode_ids(tokenize(tokenizers, captions), text_encoders, family)
    added = None
    if family == "sdxl":
        size = pipe.unet.config.sample_size * 2
        ids = torch.tensor([[size, size, 0, 0, size, size]] * len(captions)).float()
        added = {"text_embeds": pooled, "time_ids": ids}
    return hidden, added


def unet_output(pipe: Any, unet: Any, text_encoders: list[Any], family: str) -> Any:
    """The UNet's prediction on fixed random latents, timesteps and captions."""
    import torch

    hidden, added = _conditioning(pipe, text_encoders, family, ["a red cat", "a dog, park"])
    generator = torch.Generator().manual_seed(0)
    size = pipe.unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=generator)
    with torch.no_grad():
        out = unet(
            x, torch.tensor([10, 600]), encoder_hidden_states=hidden, added_cond_kwargs=added
        )
    return out.sample, hidden


def denoising_loss(
    pipe: Any, unet: Any, text_encoders: list[Any], family: str, data: Path
) -> float:
    """Mean noise-prediction error on the training images at fixed noise and timesteps."""
    import csv

    import torch
    from lorakit_sd.data.buckets import load_pixels
    from lorakit_sd.data.cache import encode_moments

    with open(data / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    size = pipe.unet.config.sample_size * 2
    pixels = torch.stack([load_pixels(str(data / r["file_name"]), (size, size)) for r in rows])
    moments = encode_moments(pipe.vae, pixels)
    latents = moments[:, :4] * pipe.vae.config.scaling_factor
    hidden, added = _conditioning(pipe, text_encoders, family, [r["text"] for r in rows])
    total = 0.0
    steps = [50, 200, 400, 600, 800, 950]
    with torch.no_grad():
        for t in steps:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(t))
            timesteps = torch.full((len(rows),), t)
            noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
            pred = unet(noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added)
            total += torch.nn.functional.mse_loss(pred.sample, noise).item()
    return total / len(steps)


def lora_keys(path: Path) -> tuple[list[str], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), dict(f.metadata() or {})


def cli(*args: object) -> int:
    """``lorakit ARGS`` in-process with the installed entry points, as a user's shell runs it;
    its exit code."""
    from lorakit.cli import main
    from lorakit.plugins import set_plugins

    set_plugins(None)  # the installed entry points, as a user's shell sees them
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        set_plugins(None)
    return 0


def resumed_equals_whole(train: Any, tmp: Path, model: Any, data: Path, common: dict) -> None:
    """Train ``common`` (which saves at step 2 of 4) whole, and again resumed from step 2:
    the same diffusers file bit for bit, and the same last losses."""
    import torch
    from safetensors.torch import load_file

    whole, _ = train(tmp, model, data, output_dir=tmp / "whole", **common)
    resumed, _ = train(
        tmp,
        model,
        data,
        output_dir=tmp / "resumed",
        resume=str(whole.output_dir / "checkpoints" / "step-2"),
        **common,
    )
    a = load_file(str(whole.output_dir / "whole.diffusers.safetensors"))
    b = load_file(str(resumed.output_dir / "resumed.diffusers.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first_losses(whole.output_dir)[2:] == first_losses(resumed.output_dir)[-2:]
