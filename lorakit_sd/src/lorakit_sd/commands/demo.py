"""``lorakit demo`` for images: a stand-in SD1 model, twelve labeled shapes, the sd15 template.

The base model is a tiny random-weight SD1-shaped pipeline built on the spot (see
:meth:`ModelFamily.standin`): it is a stand-in, not Stable Diffusion, and the
run shows the machinery (labeling, cached latents, buckets, previews, checkpoints, kohya and
diffusers files), not the quality. The images are coloured shapes named after what they show
(``red_disc_01.png``); the ``filename`` labeler of lorakit-labelers captions them through
lorakit's labeling API, as ``lorakit label DIR --labeler filename`` would. The config is the
shipped ``sd15`` template with the paths and the sizes changed so it trains in seconds on a
CPU.
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lorakit.api import (
    METADATA_NAME,
    create_labeler,
    find_images,
    get_registries,
    label_folder,
    make_caption,
    write_text,
)
from lorakit_sd import families
from lorakit_sd.models import quiet_libraries

#: The trigger word every caption starts with (as a user's LoRA would have one).
TRIGGER = "lorakit_shapes"
#: Colours and shapes of the demo images: one image per pair.
COLORS = {
    "red": (215, 40, 40),
    "blue": (40, 70, 215),
    "green": (40, 165, 70),
    "yellow": (235, 200, 40),
}
SHAPES = ("disc", "bar", "square")
#: Image sizes: bars are drawn wide, so they go to a wide bucket.
IMAGE_SIZES = {"disc": (64, 64), "bar": (64, 40), "square": (64, 64)}
PROMPTS = [f"{TRIGGER}, red disc", f"{TRIGGER}, blue bar"]


def draw_shape(shape: str, color: str, size: tuple[int, int]) -> Any:
    """A ``color`` ``shape`` (disc, bar or square) on a light background, as a PIL image."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, (245, 242, 235))
    draw = ImageDraw.Draw(image)
    fill = COLORS[color]
    if shape == "disc":
        draw.ellipse((w // 6, h // 6, w - w // 6, h - h // 6), fill=fill)
    elif shape == "bar":
        draw.rectangle((w // 10, h // 3, w - w // 10, h - h // 3), fill=fill)
    elif shape == "square":
        draw.rectangle((w // 4, h // 4, w - w // 4, h - h // 4), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r} (disc, bar or square)")
    return image


def write_shapes(folder: Path) -> list[Path]:
    """Write one image per colour and shape, named ``<colour>_<shape>_<nn>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (color, shape) in enumerate(((c, s) for s in SHAPES for c in COLORS), start=1):
        path = folder / f"{color}_{shape}_{number:02d}.png"
        draw_shape(shape, color, IMAGE_SIZES[shape]).save(path)
        paths.append(path)
    return paths


def label_images(folder: Path) -> str:
    """Caption ``folder`` into ``metadata.csv``; returns who wrote it (for the config header).

    Uses the ``filename`` labeler through :func:`lorakit.label_folder` when a
    plugin registers it (lorakit-labelers); otherwise writes the same table directly.
    """

    registries = get_registries()
    if "filename" in registries.labelers:
        labeler = create_labeler("filename", {}, registries)
        label_folder(
            folder, labeler, mode="overwrite", prefix=TRIGGER, progress=False, name="filename"
        )
        return "lorakit's filename labeler"
    rows = []
    for name in find_images(folder):
        words = [w for w in Path(name).stem.split("_") if not w.isdigit()]
        rows.append({"file_name": name, "text": make_caption(" ".join(words), TRIGGER)})
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=["file_name", "text"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / METADATA_NAME, out.getvalue())
    return "the demo (lorakit-labelers is not installed)"


def demo_command(folder: Path) -> Path:
    """Build the stand-in model, the images and their captions in ``folder``; return the
    path of a config that trains them."""

    folder = Path(folder)
    family = next(f for f in families.all_families() if f.demo)
    with quiet_libraries():
        model = family.standin(folder / f"stand-in-{family.name}")
    data = folder / "data"
    write_shapes(data)
    how = label_images(data)
    _, package, name = families.spec(family.name).template or ("", "", "")
    template = resources.files(package).joinpath(name).read_text("utf-8")
    config = yaml.safe_load(template)
    config.update(
        base_model=str(model.diffusers_dir),
        train_data_dir=str(data),
        output_dir=str(folder / "output" / "shapes"),
        lora_rank=8,
        lora_alpha=8,
        batch_size=4,
        epochs=1,
        max_steps=60,
        learning_rate=1e-2,
        lr_scheduler="constant",
        lr_warmup_steps=0,
        mixed_precision="auto",
        gradient_checkpointing=False,
        save_steps=30,
        sample_prompts=PROMPTS,
        sample_every_n_steps=30,
    )
    config["sd"].update(resolution=model.resolution, bucket_step=8, sample_steps=10)
    path = folder / "config.yaml"
    header = (
        f"# lorakit demo (images): the {Path(name).stem} template, resized for a random "
        f"stand-in {family.label} model\n"
        "# (random weights, not a trained model).\n"
        f"# Captions: {data / 'metadata.csv'}, written by {how}.\n"
        "# Train it again: lorakit train --config " + str(path) + "\n"
    )
    write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return path
