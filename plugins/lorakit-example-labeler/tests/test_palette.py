"""The example plugin as a user meets it: installed, found through its entry point, listed
by ``lorakit plugins``, and run by ``lorakit label --labeler palette``."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorakit_example_labeler.palette import colour_name, describe
from PIL import Image, ImageDraw

SOURCE = Path(__file__).resolve().parent.parent / "src" / "lorakit_example_labeler"
PUBLIC_API = {"lorakit.api"}


def lorakit(*args: object) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process: plugins come from installed entry points only."""
    return subprocess.run(
        [sys.executable, "-m", "lorakit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_found_through_its_entry_point():
    from lorakit.plugins import build_plugins

    plugins = build_plugins()  # built-ins + installed entry points, nothing registered by hand
    entry = plugins.registries.labelers.entry("palette")
    assert (entry.plugin, entry.distribution) == ("example-labeler", "lorakit-example-labeler")
    info = plugins.infos["example-labeler"]
    assert info.status == "ok" and not info.builtin and info.api == 2
    assert info.registered == {"labeler": ["palette"]}


def test_lorakit_plugins_json_lists_it_with_its_distribution():
    result = lorakit("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    mine = listed["example-labeler"]
    assert mine["distribution"] == "lorakit-example-labeler"
    assert mine["version"] == "0.1.0" and mine["status"] == "ok"
    assert mine["registered"] == {"labeler": ["palette"]}


def test_lorakit_label_with_palette(tmp_path):
    Image.new("RGB", (32, 32), (220, 20, 20)).save(tmp_path / "red.png")
    sky = Image.new("RGB", (32, 32), (250, 250, 250))
    ImageDraw.Draw(sky).rectangle((0, 0, 31, 19), fill=(30, 70, 220))
    sky.save(tmp_path / "sky.jpg", quality=95)
    Image.new("RGB", (32, 32), (12, 12, 12)).save(tmp_path / "night.png")

    result = lorakit("label", tmp_path, "--labeler", "palette", "--prefix", "mascot_v2")
    assert result.returncode == 0, result.stderr
    first = (tmp_path / "metadata.csv").read_bytes()
    with open(tmp_path / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = {r["file_name"]: r["text"] for r in csv.DictReader(f)}
    assert rows == {
        "night.png": "mascot_v2, black, dark, monochrome",
        "red.png": "mascot_v2, red, bright, vivid colors",
        "sky.jpg": "mascot_v2, blue and white, bright",
    }
    result = lorakit("label", tmp_path, "-l", "palette", "--prefix", "mascot_v2", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "metadata.csv").read_bytes() == first

    result = lorakit("label", tmp_path, "-l", "palette", "-o", "colors=9", "--overwrite")
    assert result.returncode == 2 and "option colors" in result.stderr


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((255, 0, 0), "red"),
        ((255, 150, 0), "orange"),
        ((120, 70, 20), "brown"),
        ((250, 230, 30), "yellow"),
        ((0, 200, 0), "green"),
        ((0, 0, 255), "blue"),
        ((128, 0, 128), "purple"),
        ((255, 105, 180), "pink"),
        ((255, 255, 255), "white"),
        ((128, 128, 128), "gray"),
        ((5, 5, 5), "black"),
    ],
)
def test_colour_names(rgb, name):
    assert colour_name(rgb) == name


def test_colour_count_and_share():
    image = Image.new("RGB", (100, 100), (0, 0, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 99, 29), fill=(255, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 30, 99, 34), fill=(0, 200, 0))  # 5%: too little
    assert describe(image, count=3, min_share=0.1).startswith("blue and red,")
    assert describe(image, count=1).startswith("blue,")


def test_uses_only_the_public_api():
    for path in SOURCE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lorakit."):
                assert node.module in PUBLIC_API, f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("lorakit"):
                        assert alias.name in PUBLIC_API, f"{path.name} imports {alias.name}"
