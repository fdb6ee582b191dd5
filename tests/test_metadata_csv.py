"""One metadata.csv rule for training, ``label --append`` and the web page.

Each table below is read by lorakit_sd's training reader and by ``lorakit label --append``
through the CLI; both must agree on what the file says.
"""

from __future__ import annotations

import csv
import io

import pytest
from lorakit_sd.data.readers import read_metadata_csv
from PIL import Image

from lorakit import labeling
from lorakit.errors import DataError
from lorakit.metadata_csv import read_table


class Fixed(labeling.Labeler):
    def label(self, images, paths):
        return ["new" for _ in images]


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return tmp_path


TABLES = {
    "unquoted commas in the last column": "file_name,text\na.png,red, cat, sitting\n\nb.png,dog\n",
    "image and caption aliases": "image,caption\na.png,red, cat, sitting\nb.png,dog\n",
    "extra columns": 'file,score,text\na.png,1,"red, cat, sitting"\nb.png,2,dog\n',
}


@pytest.mark.parametrize("text", list(TABLES.values()), ids=list(TABLES))
def test_training_and_label_append_read_the_same_table(folder, text):
    (folder / "metadata.csv").write_text(text)
    records = read_metadata_csv(folder)
    assert [(r["image"].rsplit("/", 1)[1], r["caption"]) for r in records] == [
        ("a.png", "red, cat, sitting"),
        ("b.png", "dog"),
    ]
    report = labeling.label_folder(folder, Fixed(), mode="append", progress=False)
    assert report.kept == 2 and report.labeled == ["c.png"]
    table = read_table(folder / "metadata.csv")
    column, caption = table.file_column, table.text_column
    assert [(r[column], r[caption]) for r in table.rows] == [
        ("a.png", "red, cat, sitting"),
        ("b.png", "dog"),
        ("c.png", "new"),
    ]
    # what label wrote is plain CSV that any reader takes the same way
    rows = list(csv.DictReader(io.StringIO((folder / "metadata.csv").read_text())))
    assert rows[0][caption] == "red, cat, sitting"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_a_bom_is_read(folder, encoding):
    text = "file_name,text\na.png,café\nb.png,dog\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    (folder / "metadata.csv").write_bytes(data)
    assert [r["caption"] for r in read_metadata_csv(folder)] == ["café", "dog"]
    assert read_table(folder / "metadata.csv").encoding == "UTF-16"
    labeling.label_folder(folder, Fixed(), mode="append", progress=False)
    assert (folder / "metadata.csv").read_text(encoding="utf-8").splitlines()[1] == "a.png,café"


def test_utf16_without_a_bom_is_named_as_utf16(folder):
    (folder / "metadata.csv").write_bytes("file_name,text\na.png,x\n".encode("utf-16-le"))
    with pytest.raises(DataError, match="looks like UTF-16 text without a byte-order mark"):
        read_metadata_csv(folder)


def test_header_error_names_the_aliases_and_the_separator(folder):
    (folder / "metadata.csv").write_text("file_name;text\na.png;x\n")
    for read in (read_metadata_csv, lambda f: labeling.label_folder(f, Fixed(), mode="append")):
        with pytest.raises(DataError) as info:
            read(folder)
        message = str(info.value)
        assert "metadata.csv:1" in message
        assert "(file_name, image, file)" in message and "(text, caption)" in message
        assert "separated by semicolons" in message
    (folder / "metadata.csv").write_text("name,words\na.png,x\n")
    with pytest.raises(DataError, match=r"found 'name,words'$"):
        read_metadata_csv(folder)
