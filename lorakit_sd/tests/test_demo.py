"""``lorakit demo`` for images: the stand-in model, the labeled shapes and the run it trains.

One demo run (sd only, through :func:`lorakit.cli.demo.run_demo`, as ``lorakit demo`` calls it) is
shared by the tests: its exported LoRA must load into the stand-in pipeline with diffusers
and lower the denoising error on the demo's own images, its previews must be images and its
captions must come from the ``filename`` labeler.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from sd_helpers import denoising_loss, lora_keys


def _plugins(with_labelers: bool) -> Any:
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins

    extra: list[tuple[str, Any]] = [("sd", lorakit_sd.plugin)]
    if with_labelers:
        import lorakit_labelers.plugin

        extra.append(("labelers", lorakit_labelers.plugin))
    return build_plugins(entry_points=False, extra=extra)


def _has_labelers() -> bool:
    import importlib.util

    return importlib.util.find_spec("lorakit_labelers.plugin") is not None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    from rich.console import Console

    from lorakit.cli.demo import run_demo
    from lorakit.plugins import set_plugins

    out = tmp_path_factory.mktemp("demo")
    console = Console(file=io.StringIO(), width=200)
    set_plugins(_plugins(_has_labelers()))
    try:
        (run,) = run_demo(out, ["sd"], console=console)
    finally:
        set_plugins(None)
    return run, console.file.getvalue()  # type: ignore[attr-defined]


def test_demo_trains_and_the_loss_falls(demo):
    run, printed = demo
    assert run.backend == "sd" and run.steps == 60
    assert run.first_loss is not None and run.final_loss is not None
    assert run.final_loss < 0.8 * run.first_loss, (run.first_loss, run.final_loss)
    assert "random stand-ins" in printed and "loss first" in printed
    out = run.output_dir
    assert (out / "loss.png").stat().st_size > 0
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-30", "step-60"}
    # The config is the shipped sd15 template, resized: its other choices are kept.
    import yaml

    config = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    assert config["optimizer"] == "adamw" and config["sd"]["min_snr_gamma"] == 5.0
    assert config["sd"]["resolution"] == 32 and config["sd"]["bucket_step"] == 8


def test_kohya_file_loads_into_the_stand_in_and_fits_the_images(demo):
    from diffusers import StableDiffusionPipeline

    run, _ = demo
    folder = run.config.parent
    kohya = run.output_dir / "shapes.safetensors"
    keys, metadata = lora_keys(kohya)
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_network_dim"] == "8"
    pipe = StableDiffusionPipeline.from_pretrained(folder / "stand-in-sd1" / "diffusers")
    data = folder / "data"
    before = denoising_loss(pipe, pipe.unet, [pipe.text_encoder], "sd1", data)
    pipe.load_lora_weights(str(kohya))
    adapted = [n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A")]
    assert len(adapted) == len([k for k in keys if k.endswith(".lora_down.weight")])
    after = denoising_loss(pipe, pipe.unet, [pipe.text_encoder], "sd1", data)
    assert after < 0.9 * before, (before, after)


def test_previews_are_images(demo):
    from PIL import Image

    run, _ = demo
    pngs = sorted((run.output_dir / "samples").glob("*.png"))
    # One image per prompt at steps 30 and 60 (plus a grid per step).
    singles = [p for p in pngs if p.stem.count("-") == 2]
    assert len(singles) == 4, [p.name for p in pngs]
    for path in singles:
        with Image.open(path) as image:
            assert image.size == (32, 32)
            assert len(set(image.convert("RGB").getdata())) > 1  # not a blank picture


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_captions_come_from_the_filename_labeler(demo):
    lorakit_labelers = pytest.importorskip("lorakit_labelers.simple")
    from lorakit_sd.commands.demo import TRIGGER

    run, _ = demo
    data = run.config.parent / "data"
    rows = _rows(data / "metadata.csv")
    assert len(rows) == 12 and len({r["text"] for r in rows}) == 12
    for row in rows:
        caption = lorakit_labelers.caption_from_name(row["file_name"])
        assert row["text"] == f"{TRIGGER}, {caption}"
    assert "red_disc_01.png" in {r["file_name"] for r in rows}
    assert "written by lorakit's filename labeler" in run.config.read_text(encoding="utf-8")


def test_without_labelers_the_demo_writes_the_same_table(tmp_path):
    """With lorakit-labelers missing, the demo's own table equals the labeler's."""
    from lorakit_sd.commands.demo import label_images, write_shapes

    from lorakit.plugins import set_plugins

    tables = {}
    for with_labelers in (False, True) if _has_labelers() else (False,):
        folder = tmp_path / str(with_labelers)
        write_shapes(folder)
        set_plugins(_plugins(with_labelers))
        try:
            how = label_images(folder)
        finally:
            set_plugins(None)
        assert ("filename labeler" in how) == with_labelers
        tables[with_labelers] = (folder / "metadata.csv").read_bytes()
    assert _rows(tmp_path / "False" / "metadata.csv")[0] == {
        "file_name": "blue_bar_06.png",
        "text": "lorakit_shapes, blue bar",
    }
    assert len(set(tables.values())) == 1
