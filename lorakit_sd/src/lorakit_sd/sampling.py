"""Preview images: what a family renders (seeded per prompt, inside ``torch.random.fork_rng``,
so previews never disturb the run's random stream), saved as PNGs and a contact sheet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit.api import UsageError, atomic_path, split_control
from lorakit_sd import families


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
    max_tokens: int | None = None,
    clip_skip: int = 1,
    progress: bool = False,
    control: list[str] | None = None,
) -> list[Path]:
    """Render ``prompts`` into ``directory/<stem>-NN.png`` plus the sheet ``<stem>.png``.

    A video family's clips are written as ``<stem>-NN.mp4`` and ``<stem>-NN.webp``; the
    sheet shows their first frames. ``progress``: diffusers' progress bar over each prompt's
    denoising steps (stderr).
    ``control``: edit models' input images, one entry for every prompt or one per prompt
    (``a.png|b.png`` for several).
    """

    spec = families.get(family)
    video = {}
    if spec.frame_multiple:
        video = {"frames": min(sec.video.frames), "image": sec.video.sample_image}
    images = spec.render(
        pipe,
        prompts,
        prediction_type=prediction_type,
        seed=seed,
        steps=steps,
        guidance=sec.sample_guidance_scale,
        width=width,
        height=height,
        negative=sec.sample_negative_prompt,
        dtype=dtype,
        max_tokens=max_tokens,
        clip_skip=clip_skip,
        progress=progress,
        **video,
        control=control_images(families.get(family), prompts, control or []),
    )
    directory.mkdir(parents=True, exist_ok=True)
    if images and isinstance(images[0], list):  # clips: lists of frames
        from lorakit_sd.clipfiles import DEFAULT_FPS, write_mp4, write_webp

        fps = sec.video.fps or DEFAULT_FPS
        paths = []
        for i, clip in enumerate(images):
            paths.append(write_mp4(clip, directory / f"{stem}-{i:02d}.mp4", fps))
            paths.append(write_webp(clip, directory / f"{stem}-{i:02d}.webp", fps))
        firsts = [clip[0] for clip in images]
        paths.append(save_png(contact_sheet(firsts, prompts), directory / f"{stem}.png"))
        return paths
    paths = [save_png(im, directory / f"{stem}-{i:02d}.png") for i, im in enumerate(images)]
    paths.append(save_png(contact_sheet(images, prompts), directory / f"{stem}.png"))
    return paths


def control_images(family: Any, prompts: list[str], given: list[str]) -> list[list[Any]] | None:
    """Each prompt's control images (PIL), from ``given`` (one entry for all prompts or one
    per prompt); None when none are given. One line for a family that takes none, a count
    that fits neither, or a file that cannot be read."""
    from lorakit_sd.data.images import check_image, open_rgb

    if not given:
        return None
    if not family.takes_control:
        raise UsageError(f"{family.label} takes no control image (--control, sd.sample_control)")
    if len(given) not in (1, len(prompts)):
        raise UsageError(
            f"{len(given)} control entries for {len(prompts)} prompts: give one for every "
            "prompt or one per prompt (--control, sd.sample_control)"
        )
    out = []
    for entry in given * len(prompts) if len(given) == 1 else given:
        paths = split_control(entry)
        if len(paths) > family.max_control_images:
            raise UsageError(
                f"{entry}: {family.label} takes at most {family.max_control_images} control "
                "image(s) per prompt"
            )
        for path in paths:
            if check_image(path)[0] is None:
                raise UsageError(f"control image {path}: {check_image(path)[1]}")
        out.append([open_rgb(p) for p in paths])
    return out
