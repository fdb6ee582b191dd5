"""Checks that lorakit finds the labeler through its entry point and that it labels."""

from __future__ import annotations

import os

from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_labeler_is_found_and_writes_metadata(tmp_path):
    from lorakit.api import create_labeler, label_folder
    from lorakit.plugins import build_plugins

    registries = build_plugins().registries  # loads installed plugins by entry point
    assert registries.labelers.entry("mylabeler").distribution == "lorakit-mylabeler"

    Image.new("RGB", (40, 20)).save(tmp_path / "wide.png")
    Image.new("RGB", (20, 40)).save(tmp_path / "tall.png")
    labeler = create_labeler("mylabeler", {"tolerance": "0.1"}, registries)
    report = label_folder(tmp_path, labeler, progress=False)

    assert (tmp_path / "metadata.csv").read_text() == (
        "file_name,text\ntall.png,a portrait picture\nwide.png,a landscape picture\n"
    )
    assert report.labeled == ["tall.png", "wide.png"]
