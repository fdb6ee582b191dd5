"""Preview images: render prompts with a fixed seed and lay them out on a contact sheet.

Rendering uses a deterministic Euler sampler and a CPU generator seeded per prompt, inside
``torch.random.fork_rng``: previews are the same on every run and never disturb the training
run's random stream (a run with previews trains exactly like one without).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from lorakit.api import atomic_path


def sampling_pipeline(pipe: Any, family: str, prediction_type: str) -> Any:
    """A pipeline sharing ``pipe``'s modules, with an Euler scheduler and no progress bar."""
    from diffusers import EulerDiscreteScheduler

    from lorakit_sd.models import pipeline_class

    scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type=prediction_type
    )
    components = {**pipe.components, "scheduler": scheduler}
    if family == "sd1":
        components["requires_safety_checker"] = False
    else:
        components["force_zeros_for_empty_prompt"] = pipe.config.get(
            "force_zeros_for_empty_prompt", True
        )
    sampler = pipeline_class(family)(**components)
    sampler.set_progress_bar_config(disable=True)
    return sampler


def render(
    pipe: Any,
    prompts: list[str],
    *,
    seed: int,
    steps: int,
    guidance: float,
    width: int,
    height: int,
    negative: str = "",
    dtype: torch.dtype = torch.float32,
) -> list[Any]:
    """One image per prompt; prompt ``i`` uses seed ``seed + i``."""
    device = next(pipe.unet.parameters()).device
    autocast: Any = contextlib.nullcontext()
    if dtype != torch.float32 and device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=dtype)
    images = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
        for i, prompt in enumerate(prompts):
            generator = torch.Generator("cpu").manual_seed(seed + i)
            out = pipe(
                prompt,
                negative_prompt=negative or None,
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                generator=generator,
                output_type="pil",
            )
            images.append(out.images[0])
    return images


def contact_sheet(images: list[Any], labels: list[str], columns: int = 4) -> Any:
    """A grid of the images, each with its label (cut to fit) underneath."""
    from PIL import Image, ImageDraw, ImageFont

    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_w = max(max(im.width for im in images), 128)
    cell_h = max(im.height for im in images)
    strip = 16
    sheet = Image.new("RGB", (columns * cell_w, rows * (cell_h + strip)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % columns) * cell_w, (i // columns) * (cell_h + strip)
        sheet.paste(image, (x + (cell_w - image.width) // 2, y))
        text = label
        while text and draw.textlength(text, font=font) > cell_w - 4:
            text = text[:-2] + "…" if len(text) > 2 else ""
        draw.text((x + 2, y + cell_h + 2), text, fill=(0, 0, 0), font=font)
    return sheet


def save_png(image: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def render_and_save(
    pipe: Any,
    family: str,
    prompts: list[str],
    directory: Path,
    stem: str,
    *,
    sec: Any,
    seed: int,
    width: int,
    height: int,
    steps: int,
    prediction_type: str,
    dtype: torch.dtype = torch.float32,
) -> list[Path]:
    """Render ``prompts`` into ``directory/<stem>-NN.png`` plus the sheet ``<stem>.png``."""
    sampler = sampling_pipeline(pipe, family, prediction_type)
    images = render(
        sampler, prompts, seed=seed, steps=steps, guidance=sec.sample_guidance_scale,
        width=width, height=height, negative=sec.sample_negative_prompt, dtype=dtype,
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    paths = [save_png(im, directory / f"{stem}-{i:02d}.png") for i, im in enumerate(images)]
    paths.append(save_png(contact_sheet(images, prompts), directory / f"{stem}.png"))
    return paths
