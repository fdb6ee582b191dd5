"""The filename and sidecar labelers, and the plugin's registrations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from lorakit_labelers.clip import read_vocabulary
from lorakit_labelers.simple import caption_from_name


@pytest.mark.parametrize(
    ("name", "caption"),
    [
        ("red_car.png", "red car"),
        ("001_blue-house.jpg", "blue house"),
        ("mascot_v2_waving-03.png", "mascot v2 waving"),
        ("dog (2).jpeg", "dog"),
        ("cat copy.png", "cat"),
        ("car_2_doors.png", "car 2 doors"),
        ("IMG_1234.JPG", "IMG"),
        ("0042.png", ""),
        ("a.b.c.png", "a b c"),
    ],
)
def test_caption_from_name(name, caption):
    assert caption_from_name(name) == caption


def rows(folder):
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        return {r["file_name"]: r["text"] for r in csv.DictReader(f)}


def test_filename_labeler(images, cli):
    code, _, err = cli("label", images, "-l", "filename", "-o", "lowercase=true", "--prefix", "tw")
    assert code == 0, err
    assert rows(images)["square_yellow_01.png"] == "tw, square yellow"


def test_sidecar_labeler(images, cli):
    (images / "square_yellow_01.txt").write_text("\ufeffa green\nsquare, centred\n", "utf-8")
    (images / "circle_red_02.caption").write_text("from caption file")
    code, _, err = cli("label", images, "-l", "sidecar")
    assert code == 2 and err.count("\n") == 1
    assert f"{images / 'circle_red_02.png'}: no caption file circle_red_02.txt next to it" in err
    assert not (images / "metadata.csv").exists()

    code, _, err = cli("label", images, "-l", "sidecar", "-o", "missing=empty")
    assert code == 0, err
    got = rows(images)
    assert got["square_yellow_01.png"] == "a green square, centred"
    assert got["circle_red_02.png"] == ""
    assert "got an empty caption" in err

    code, _, err = cli("label", images, "-l", "sidecar", "-o", "missing=filename", "--overwrite")
    assert code == 0, err
    assert rows(images)["circle_red_02.png"] == "circle red"

    code, _, err = cli(
        "label",
        images,
        "-l",
        "sidecar",
        "-o",
        "extension=caption",
        "-o",
        "missing=empty",
        "--overwrite",
    )
    assert code == 0, err
    assert rows(images)["circle_red_02.png"] == "from caption file"


def test_option_errors_name_the_option(images, cli):
    code, _, err = cli("label", images, "-l", "clip", "-o", "template=no slot")
    assert code == 2 and "option template: Value error, must contain {} once" in err
    code, _, err = cli("label", images, "-l", "clip", "-o", "device=tpu")
    assert code == 2 and "option device" in err
    code, _, err = cli("label", images, "-l", "clip", "-o", "tags=/no/such/tags.txt")
    assert code == 2 and "tags file /no/such/tags.txt does not exist" in err


def test_shipped_vocabulary():
    tags = read_vocabulary()
    assert len(tags) > 100 and len(tags) == len(set(tags))
    assert all(t == t.strip() and "#" not in t for t in tags)


def test_plugin_module_is_light_and_registers_through_its_entry_point():
    code = (
        "import sys, json\n"
        "from lorakit.plugins import build_plugins\n"
        "plugins = build_plugins()\n"
        "entries = {e.spec.name: e.distribution for e in plugins.registries.labelers}\n"
        "heavy = sorted({'torch', 'transformers', 'PIL'} & set(sys.modules))\n"
        "print(json.dumps([entries, heavy]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    entries, heavy = json.loads(out.stdout)
    for name in ("clip", "blip", "florence2", "qwen-vl", "filename", "sidecar"):
        assert entries[name] == "lorakit-labelers"
    assert heavy == []
