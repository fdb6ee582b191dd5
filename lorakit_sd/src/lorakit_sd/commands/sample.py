"""``lorakit sample --base MODEL --lora FILE[:w] ... -p PROMPT``: render with one or several
LoRAs applied together, one PNG per prompt plus a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError, half_dtype
from lorakit_sd.commands import load_model, section_of
from lorakit_sd.lorafiles.apply import apply_to_model
from lorakit_sd.models import quiet_libraries
from lorakit_sd.sampling import render_and_save


def trained_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """``(width, height)`` a LoRA was trained at: ``ss_resolution`` (sd-scripts writes
    ``(512, 768)``, width first), else ``modelspec.resolution`` (``512x768``)."""
    import re

    for key in ("ss_resolution", "modelspec.resolution"):
        numbers = [int(n) for n in re.findall(r"\d+", metadata.get(key, ""))]
        if len(numbers) == 1:
            return numbers[0], numbers[0]
        if len(numbers) == 2 and min(numbers) > 0:
            return numbers[0], numbers[1]
    return None


def sample(
    base: str,
    loras: list[tuple[str, float]],
    prompts: list[str],
    output: Path,
    seed: int = 42,
    steps: int | None = None,
    config: Any = None,
    width: int | None = None,
    height: int | None = None,
) -> list[Path]:
    """Render ``prompts`` with ``loras`` applied; returns the images and the contact sheet.

    The size: ``width``/``height``, else ``sd.sample_width``/``sd.sample_height``, else the
    first LoRA's training resolution (``ss_resolution``), else ``sd.resolution`` or the
    family's default. A progress bar (on stderr) follows the denoising steps.
    """
    import torch

    for name, value in (("--width", width), ("--height", height)):
        if value is not None and (value < 8 or value % 8):
            raise UsageError(f"{name} {value}: a positive multiple of 8")
    section = section_of(config)
    model = load_model(base, section, config)
    applied = apply_to_model(model, loras)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32
    if device.type == "cuda":
        dtype = half_dtype()
    with quiet_libraries():  # diffusers warns about casting the VAE, which is expected here
        model.pipe.to(device, dtype)
    resolution = section.resolution or model.spec.default_resolution
    trained = next((s for lora in applied if (s := trained_size(lora.metadata))), None)
    default_w, default_h = trained or (resolution, resolution)
    stem = "+".join(Path(p).name.split(".")[0] for p, _ in loras) or "base"
    prediction = section.prediction_type or model.pipe.scheduler.config.get(
        "prediction_type", "epsilon"
    )
    return render_and_save(
        model.pipe,
        model.family,
        list(prompts),
        Path(output),
        stem,
        sec=section,
        seed=seed,
        width=width or section.sample_width or default_w,
        height=height or section.sample_height or default_h,
        steps=steps or section.sample_steps,
        prediction_type=prediction,
        max_tokens=section.max_token_length,
        clip_skip=section.clip_skip if model.spec.clip_skip_applies else 1,
        progress=True,
        control=section.sample_control,
    )
