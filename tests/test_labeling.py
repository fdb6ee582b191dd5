"""``lorakit label`` and lorakit.labeling: metadata.csv writing, modes, bad images, options.

A stub labeler (PIL only) registered in-process stands in for the model labelers, whose
own tests (lorakit_labelers/tests) run the tiny CLIP and BLIP through the same driver.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict
from rich.console import Console

import lorakit
from lorakit import labeling
from lorakit.errors import UsageError
from lorakit.plugins import build_plugins, set_plugins
from lorakit.registry import LabelerSpec
from lorakit.testing import run_cli

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class StubOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str = "colour"
    fail_on: str | None = None
    interrupt_on: str | None = None


class StubLabeler(labeling.Labeler):
    """Names the dominant channel of each image; records its calls for the tests."""

    batch_size = 2
    calls: list[list[str]] = []
    events: list[str] = []

    def __init__(self, word: str, fail_on: str | None, interrupt_on: str | None) -> None:
        self.word, self.fail_on, self.interrupt_on = word, fail_on, interrupt_on

    def setup(self) -> None:
        StubLabeler.events.append("setup")

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        names = [p.name for p in paths]
        StubLabeler.calls.append(names)
        if self.fail_on in names:
            raise ValueError("boom")
        if self.interrupt_on in names:
            raise KeyboardInterrupt
        out = []
        for image in images:
            r, g, b = image.getpixel((0, 0))
            out.append(f"{self.word} {max((r, 'red'), (g, 'green'), (b, 'blue'))[1]}")
        return out

    def teardown(self) -> None:
        StubLabeler.events.append("teardown")


class StubPlugin:
    LORAKIT_PLUGIN_API = 1

    @lorakit.hookimpl
    def register_labelers(self, register):
        register(LabelerSpec("stub", StubLabeler, "test labeler", StubOptions))
        register(LabelerSpec("bare", lambda: BadCountLabeler(), "returns too few captions"))


class BadCountLabeler(labeling.Labeler):
    def label(self, images, paths):
        return ["x"]


@pytest.fixture(autouse=True)
def stub_plugins():
    StubLabeler.calls, StubLabeler.events = [], []
    set_plugins(build_plugins(entry_points=False, extra=[("stub", StubPlugin())]))
    yield
    set_plugins(None)


def make_images(folder: Path, names: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in names.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None
        Image.new("RGB", (8, 8), COLOURS[colour]).save(path, format=fmt)
    return folder


@pytest.fixture
def data(tmp_path):
    return make_images(
        tmp_path / "data",
        {"img10.png": "red", "img2.png": "green", "img1.PNG": "blue", "sub/a.jpg": "red"},
    )


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_find_images_natural_order_recursive_skips_hidden(data):
    (data / "notes.txt").write_text("x")
    make_images(data, {".hidden/x.png": "red", ".y.png": "red"})
    assert labeling.find_images(data) == ["img1.PNG", "img2.png", "img10.png"]
    assert labeling.find_images(data, recursive=True) == [
        "img1.PNG",
        "img2.png",
        "img10.png",
        "sub/a.jpg",
    ]


def test_label_writes_metadata_csv_deterministically(data, capsys):
    code, out, err = run_cli(capsys, "label", data, "--labeler", "stub", "--recursive")
    assert code == 0, err
    first = (data / "metadata.csv").read_bytes()
    assert first.decode().splitlines()[0] == "file_name,text"
    assert rows(data / "metadata.csv") == [
        {"file_name": "img1.PNG", "text": "colour blue"},
        {"file_name": "img2.png", "text": "colour green"},
        {"file_name": "img10.png", "text": "colour red"},
        {"file_name": "sub/a.jpg", "text": "colour red"},
    ]
    assert "4 labeled" in out
    assert StubLabeler.calls == [["img1.PNG", "img2.png"], ["img10.png", "a.jpg"]]
    assert StubLabeler.events == ["setup", "teardown"]
    code, _, err = run_cli(capsys, "label", data, "--labeler", "stub", "--overwrite", "--recursive")
    assert code == 0, err
    assert (data / "metadata.csv").read_bytes() == first
    assert not list(data.glob(".metadata.csv*")), "temporary file left behind"


def test_existing_metadata_is_kept_without_overwrite(data, capsys):
    (data / "metadata.csv").write_text("file_name,text\nimg1.PNG,mine\n")
    code, _, err = run_cli(capsys, "label", data, "--labeler", "stub")
    assert code == 2
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert (data / "metadata.csv").read_text() == "file_name,text\nimg1.PNG,mine\n"
    assert StubLabeler.events == []  # refused before loading anything
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "--overwrite", "--append")
    assert code == 2 and "exclude each other" in err


def test_overwrite_replaces(data, capsys):
    (data / "metadata.csv").write_text("file_name,text\nimg1.PNG,mine\n")
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "--overwrite", "-o", "word=hue")
    assert code == 0, err
    assert [r["text"] for r in rows(data / "metadata.csv")][:2] == ["hue blue", "hue green"]


def test_append_labels_only_new_images_and_keeps_rows(data, capsys):
    (data / "metadata.csv").write_text(
        'file_name,text,extra\nimg2.png,"hand, written",x\ngone.png,old,y\n'
    )
    code, out, err = run_cli(
        capsys, "label", data, "-l", "stub", "--append", "--prefix", "mascot_v2"
    )
    assert code == 0, err
    assert rows(data / "metadata.csv") == [
        {"file_name": "img2.png", "text": "hand, written", "extra": "x"},
        {"file_name": "gone.png", "text": "old", "extra": "y"},
        {"file_name": "img1.PNG", "text": "mascot_v2, colour blue", "extra": ""},
        {"file_name": "img10.png", "text": "mascot_v2, colour red", "extra": ""},
    ]
    assert "2 labeled, 1 kept" in out
    StubLabeler.events.clear()
    before = (data / "metadata.csv").read_bytes()
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "--append")
    assert code == 0 and "nothing to label" in err
    assert StubLabeler.events == []  # nothing new: the labeler is not even set up
    assert (data / "metadata.csv").read_bytes() == before


def test_append_keeps_an_edit_datasets_control_column_and_images(data):
    """The control images an edit dataset's rows name are not new images to label, and the
    control column is written back as it was."""
    (data / "metadata.csv").write_text("file_name,control,text\nimg2.png,img1.PNG|img10.png,x\n")
    labeling.label_folder(data, StubLabeler("c", None, None), mode="append", progress=False)
    assert rows(data / "metadata.csv") == [
        {"file_name": "img2.png", "control": "img1.PNG|img10.png", "text": "x"}
    ]


def test_append_fills_an_existing_caption_column(data):
    (data / "metadata.csv").write_text("file_name,caption\nimg2.png,x\n")
    labeling.label_folder(data, StubLabeler("c", None, None), mode="append", progress=False)
    assert rows(data / "metadata.csv") == [
        {"file_name": "img2.png", "caption": "x"},
        {"file_name": "img1.PNG", "caption": "c blue"},
        {"file_name": "img10.png", "caption": "c red"},
    ]


def test_prefix_is_joined_once():
    assert labeling.make_caption(" a  dog\non grass ", "mascot_v2") == "mascot_v2, a dog on grass"
    assert labeling.make_caption("mascot_v2, a dog", "mascot_v2") == "mascot_v2, a dog"
    assert labeling.make_caption("", "mascot_v2,") == "mascot_v2"
    assert labeling.make_caption("a dog", None) == "a dog"


def test_dry_run_prints_and_writes_nothing(data, capsys):
    code, out, err = run_cli(capsys, "label", data, "-l", "stub", "--dry-run", "--prefix", "tw")
    assert code == 0, err
    assert not (data / "metadata.csv").exists()
    assert list(csv.DictReader(io.StringIO(out)))[0] == {
        "file_name": "img1.PNG",
        "text": "tw, colour blue",
    }
    assert "nothing written" in err
    (data / "metadata.csv").write_text("file_name,text\n")
    code, out, _ = run_cli(capsys, "label", data, "-l", "stub", "--dry-run", "--overwrite")
    assert code == 0 and "img10.png" in out
    assert (data / "metadata.csv").read_text() == "file_name,text\n"


def test_unreadable_images_are_reported_not_fatal(data, capsys):
    good = (data / "img2.png").read_bytes()
    (data / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "notimage.jpg").write_text("hello")
    (data / "empty.webp").write_bytes(b"")
    code, out, err = run_cli(capsys, "label", data, "-l", "stub")
    assert code == 0, err
    listed = [r["file_name"] for r in rows(data / "metadata.csv")]
    assert listed == ["img1.PNG", "img2.png", "img10.png"]
    for bad in ("truncated.png", "notimage.jpg", "empty.webp"):
        assert f"skipped {data / bad}: cannot read it" in err
    assert "3 unreadable" in out


def test_all_unreadable_is_a_data_error(tmp_path, capsys):
    (tmp_path / "a.png").write_text("nope")
    code, _, err = run_cli(capsys, "label", tmp_path, "-l", "stub")
    assert code == 2 and "none of the 1 images" in err and "a.png" in err
    code, _, err = run_cli(capsys, "label", tmp_path / "missing", "-l", "stub")
    assert code == 2 and "does not exist" in err
    (tmp_path / "a.png").unlink()
    code, _, err = run_cli(capsys, "label", tmp_path, "-l", "stub")
    assert code == 2 and "no images in" in err


def test_unknown_labeler_and_bad_options_are_one_line(data, capsys):
    code, _, err = run_cli(capsys, "label", data, "--labeler", "nope")
    assert code == 2 and err.count("\n") == 1
    assert "unknown labeler 'nope' (available: bare, stub)" in err
    code, _, err = run_cli(capsys, "label", data)
    assert code == 2 and "--labeler NAME (available: bare, stub)" in err
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "-o", "wrod=x")
    assert code == 2 and "no option 'wrod'" in err and "did you mean word" in err
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "-o", "word")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = run_cli(capsys, "label", data, "-l", "bare", "-o", "x=1")
    assert code == 2 and "takes no options" in err
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "--batch-size", "0")
    assert code == 2


def test_validate_options_uses_the_options_model():
    spec = LabelerSpec("s", StubLabeler, options_model=StubOptions)
    assert labeling.validate_options(spec, {"word": "w"}) == {
        "word": "w",
        "fail_on": None,
        "interrupt_on": None,
    }
    with pytest.raises(UsageError, match="option word"):
        labeling.validate_options(spec, {"word": ["not", "a", "string"]})


def test_labeler_failures_name_the_files_and_tear_down(data, capsys):
    code, _, err = run_cli(capsys, "label", data, "-l", "stub", "-o", "fail_on=img10.png")
    assert code == 1 and "labeler stub failed on img10.png: ValueError: boom" in err
    assert StubLabeler.events == ["setup", "teardown"]
    assert not (data / "metadata.csv").exists()
    code, _, err = run_cli(capsys, "label", data, "-l", "bare")
    assert code == 1 and "returned 1 captions for 3 images" in err


def test_batch_size_option(data, capsys):
    code, _, _ = run_cli(capsys, "label", data, "-l", "stub", "--batch-size", "3")
    assert code == 0
    assert [len(c) for c in StubLabeler.calls] == [3]
    code, _, _ = run_cli(capsys, "label", data, "-l", "stub", "--batch-size", "1", "--overwrite")
    assert [len(c) for c in StubLabeler.calls] == [3, 1, 1, 1]


def test_interrupt_keeps_what_was_labeled_and_append_resumes(data, capsys):
    labeler = StubLabeler("c", None, "img10.png")
    with pytest.raises(KeyboardInterrupt):
        labeling.label_folder(data, labeler, progress=False)
    assert [r["file_name"] for r in rows(data / "metadata.csv")] == ["img1.PNG", "img2.png"]
    assert StubLabeler.events == ["setup", "teardown"]
    report = labeling.label_folder(data, StubLabeler("c", None, None), mode="append")
    assert report.labeled == ["img10.png"] and report.kept == 2
    assert len(rows(data / "metadata.csv")) == 3


def test_interrupted_overwrite_leaves_the_old_table(data):
    (data / "metadata.csv").write_text("file_name,text\nold.png,old\n")
    with pytest.raises(KeyboardInterrupt):
        labeling.label_folder(data, StubLabeler("c", None, "img10.png"), mode="overwrite")
    assert (data / "metadata.csv").read_text() == "file_name,text\nold.png,old\n"


def test_progress_bar_only_on_a_terminal(data):
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=80)
    labeling.label_folder(data, StubLabeler("c", None, None), console=console, dry_run=True)
    assert "3/3" in terminal.getvalue()
    plain = io.StringIO()
    console = Console(file=plain, force_terminal=False)
    labeling.label_folder(data, StubLabeler("c", None, None), console=console, dry_run=True)
    assert plain.getvalue() == ""


def test_images_are_rgb_with_exif_rotation_and_alpha_flattened(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    image = labeling.read_image(tmp_path / "a.png")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.new("RGB", (4, 2)).save(tmp_path / "r.jpg", exif=exif)
    assert labeling.read_image(tmp_path / "r.jpg").size == (2, 4)


def test_malformed_existing_metadata_is_a_data_error(data):
    (data / "metadata.csv").write_text("name,text\na.png,x\n")
    with pytest.raises(UsageError, match="image column .file_name, image, file."):
        labeling.label_folder(data, StubLabeler("c", None, None), mode="append")


def test_labeling_module_imports_nothing_heavy():
    code = (
        "import sys, lorakit.labeling, lorakit.cli.label_cmd\n"
        "print(sorted({'PIL', 'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_template_works(tmp_path, capsys):
    """The copyable template registers a working labeler (loaded by path, not installed)."""
    source = ROOT / "plugins/lorakit-plugin-template/src/lorakit_mylabeler/plugin.py"
    spec = importlib.util.spec_from_file_location("lorakit_mylabeler_plugin", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    set_plugins(build_plugins(entry_points=False, extra=[("mylabeler", module)]))
    make_images(tmp_path, {"a.png": "red"})
    code, _, err = run_cli(capsys, "label", tmp_path, "-l", "mylabeler")
    assert code == 0, err
    assert rows(tmp_path / "metadata.csv")[0]["file_name"] == "a.png"


def test_dry_run_works_when_metadata_csv_exists(data, capsys):
    (data / "metadata.csv").write_text("file_name,text\nimg1.PNG,mine\n")
    code, out, err = run_cli(capsys, "label", data, "-l", "stub", "--dry-run")
    assert code == 0, err
    assert "img10.png" in out and "nothing written" in err
    assert (data / "metadata.csv").read_text() == "file_name,text\nimg1.PNG,mine\n"


def _clip(path: Path, colour: str, frames: int = 4) -> Path:
    """A small lossless clip of one colour, written with PyAV."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("qtrle", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for _ in range(frames):
            frame = np.full((16, 16, 3), COLOURS[colour], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_clips_are_labeled_by_their_first_frame_and_broken_ones_listed(data, capsys):
    """A video family's folder: ``label --dry-run`` captions each clip by its first frame and
    lists a clip that cannot be decoded (one line naming it) before any training."""
    pytest.importorskip("av")
    _clip(data / "walk.mov", "green")
    (data / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 300)
    code, out, err = run_cli(capsys, "label", data, "-l", "stub", "--dry-run")
    assert code == 0, err
    table = {r["file_name"]: r["text"] for r in csv.DictReader(io.StringIO(out))}
    assert table["walk.mov"] == "colour green" and "broken.mp4" not in table
    assert f"skipped {data / 'broken.mp4'}: cannot read it (cannot decode the clip" in err
    assert not (data / "metadata.csv").exists()
