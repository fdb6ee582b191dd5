"""Edit datasets as a user lays them out, read by ``lorakit train`` before any model loads.

A diffusers folder is recognised by its ``model_index.json`` alone, so a folder holding just
that file stands for a FLUX.1 Kontext (or a FLUX.1) model here: every error below is raised
while the data is checked, before loading, as one line naming the file (exit code 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from lorakit_sd.testing import tiny_image, write_tiny_pairs

from lorakit.testing import run_cli


def model_folder(tmp_path: Path, pipeline: str) -> Path:
    folder = tmp_path / pipeline
    folder.mkdir()
    index = {"_class_name": pipeline, "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def train_error(capsys, tmp_path: Path, data: Path, pipeline: str = "FluxKontextPipeline") -> str:
    """``lorakit train`` on ``data``: its one error line (exit code 2)."""
    config = {
        "base_model": str(model_folder(tmp_path, pipeline)),
        "train_data_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "sd": {"resolution": 32, "bucket_step": 16},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = run_cli(capsys, "train", "--config", path, "--no-progress")
    lines = [line for line in err.splitlines() if line.startswith("lorakit: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, out, err)
    assert not (tmp_path / "out").exists()  # nothing written
    return lines[0]


def test_a_missing_control_image_is_named(sd_plugins, tmp_path, capsys):
    data = write_tiny_pairs(tmp_path / "data", 3)
    (data / "control_001.png").unlink()
    line = train_error(capsys, tmp_path, data)
    assert "metadata.csv:3: img_001.png: control image not found: control_001.png" in line


def test_an_unreadable_control_image_is_named(sd_plugins, tmp_path, capsys):
    data = write_tiny_pairs(tmp_path / "data", 3, layout="folder")
    (data / "control" / "img_002.png").write_bytes(b"not a png")
    line = train_error(capsys, tmp_path, data)
    assert f"{data / 'control' / 'img_002.png'}: control image not an image" in line


def test_a_control_folder_without_the_targets_name_is_named(sd_plugins, tmp_path, capsys):
    data = write_tiny_pairs(tmp_path / "data", 3, layout="folder")
    (data / "control" / "img_000.png").rename(data / "control" / "other.png")
    line = train_error(capsys, tmp_path, data)
    assert f"img_000.png: no control image with its name in {data / 'control'}" in line


def test_a_family_without_control_images_refuses_them(sd_plugins, tmp_path, capsys):
    data = write_tiny_pairs(tmp_path / "data", 2)
    line = train_error(capsys, tmp_path, data, "FluxPipeline")
    assert "the training data has control images, but FLUX.1 takes none" in line
    assert "train an edit model (FLUX.1 Kontext" in line


def test_more_control_images_than_the_family_takes(sd_plugins, tmp_path, capsys):
    data = write_tiny_pairs(tmp_path / "data", 2)
    (data / "metadata.csv").write_text(  # every row: two control images
        "file_name,control,text\n"
        "img_000.png,control_000.png|control_001.png,a cat\n"
        "img_001.png,control_001.png|control_000.png,a cat\n"
    )
    line = train_error(capsys, tmp_path, data)
    assert "metadata.csv:2: 2 control images per image, but FLUX.1 Kontext takes at most 1" in line


def test_rows_with_different_control_counts(sd_plugins, tmp_path, capsys):
    data = write_tiny_pairs(tmp_path / "data", 3)
    text = (data / "metadata.csv").read_text()
    (data / "metadata.csv").write_text(text.replace("control_002.png", ""))
    line = train_error(capsys, tmp_path, data)
    assert "metadata.csv:4: 0 control image(s), but" in line and "metadata.csv:2 has 1" in line


# -- the readers -------------------------------------------------------------------------------


def test_column_folder_and_jsonl_layouts_read_the_same_pairs(tmp_path):
    from lorakit_sd.data.control import find_controls
    from lorakit_sd.data.readers import read_metadata_csv, read_metadata_jsonl, unlisted_images

    column = write_tiny_pairs(tmp_path / "column", 2)
    records = read_metadata_csv(column)
    assert [r["control"] for r in records] == [
        [str(column / "control_000.png")],
        [str(column / "control_001.png")],
    ]
    assert unlisted_images(column, records) == []  # control images beside their targets
    folder = write_tiny_pairs(tmp_path / "folder", 2, layout="folder")
    assert find_controls(str(folder / "img_001.png"), folder, folder / "control") == [
        str(folder / "control" / "img_001.png")
    ]
    # several control images, numbered as musubi-tuner numbers them
    tiny_image(3).save(folder / "control" / "img_000_1.png")
    (folder / "control" / "img_000.png").rename(folder / "control" / "img_000_0.png")
    assert find_controls(str(folder / "img_000.png"), folder, folder / "control") == [
        str(folder / "control" / "img_000_0.png"),
        str(folder / "control" / "img_000_1.png"),
    ]
    lines = [
        {"file_name": "img_000.png", "text": "a cat", "control": ["control_000.png"]},
        {"file_name": "img_001.png", "text": "a cat", "control": "control_001.png|img_000.png"},
    ]
    (column / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    records = read_metadata_jsonl(column)
    assert [len(r["control"]) for r in records] == [1, 2]


def test_sample_control_images_are_checked_in_one_line(tmp_path):
    from lorakit_sd.sampling import control_images

    from lorakit.api import UsageError
    from lorakit_sd import families

    image = tmp_path / "in.png"
    tiny_image(0).save(image)
    with pytest.raises(UsageError, match="FLUX.1 takes no control image"):
        control_images(families.get("flux1"), ["a"], [str(image)])
    with pytest.raises(UsageError, match="2 control entries for 3 prompts"):
        control_images(families.get("kontext"), ["a", "b", "c"], [str(image)] * 2)
    with pytest.raises(UsageError, match="missing.png"):
        control_images(families.get("kontext"), ["a"], [str(tmp_path / "missing.png")])
    [[one], [two]] = control_images(families.get("kontext"), ["a", "b"], [str(image)])  # type: ignore[misc]
    assert one.size == two.size == (32, 32)
