"""``metadata.csv``: the one reader of the captions table, for training and labeling alike.

The rule (documented in ``docs/datasets.md``):

- **Encoding**: UTF-8, with or without a byte-order mark, or UTF-16 with a byte-order mark
  (what Excel's "Unicode text" and Windows Notepad write). Anything else is refused with
  what it looks like.
- **Header**: the first line names the columns, separated by commas. The image column is
  the first of ``file_name``, ``image``, ``file`` present; the caption column the first of
  ``text``, ``caption``. Other columns are kept (labeling writes them back) and ignored.
- **Rows**: blank lines are skipped; a short row has empty values for the missing columns;
  a row with more fields than the header is accepted only when the caption is the last
  column (an unquoted caption with commas: the rest of the line is the caption), else it is
  an error naming the line.
- **Control images** (edit models: the images an instruction edits): an optional column, the
  first of ``control``, ``control_image``, ``control_file`` present, holding one file name or
  several separated by ``|`` (``a.png|b.png``; a character no Windows file name holds).
  :func:`split_control` splits a value.

The same file thus means the same thing to ``lorakit train``, ``lorakit label --append``
and the web page. Standard library only.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.errors import DataError

#: File name of the captions table, next to the images.
METADATA_NAME = "metadata.csv"
#: Accepted names of the image column, in order of preference.
FILE_COLUMNS = ("file_name", "image", "file")
#: Accepted names of the caption column, in order of preference.
TEXT_COLUMNS = ("text", "caption")
#: Accepted names of the control-image column (edit datasets), in order of preference.
CONTROL_COLUMNS = ("control", "control_image", "control_file")
#: What separates several control images in one cell (``a.png|b.png``).
CONTROL_SEPARATOR = "|"
#: Columns of a new ``metadata.csv``.
COLUMNS = ("file_name", "text")

_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}


@dataclass
class MetadataTable:
    """A parsed ``metadata.csv``."""

    path: Path
    #: The header's columns, in order.
    columns: list[str]
    #: One dict per row (every column, missing values as ``""``).
    rows: list[dict[str, str]] = field(default_factory=list)
    #: The line each row starts on (1-based, the header is line 1).
    lines: list[int] = field(default_factory=list)
    #: The image column's name.
    file_column: str = "file_name"
    #: The caption column's name, or None when the header has none.
    text_column: str | None = None
    #: ``UTF-8`` or ``UTF-16``.
    encoding: str = "UTF-8"
    #: The control-image column's name, or None when the header has none.
    control_column: str | None = None


def split_control(value: str) -> list[str]:
    """The control-image file names of one cell (``a.png|b.png``), blanks dropped."""
    return [part.strip() for part in value.split(CONTROL_SEPARATOR) if part.strip()]


def read_text(path: str | Path) -> tuple[str, str]:
    """``(text, encoding name)`` of a text file by the rule above; a DataError otherwise.

    A missing file raises ``FileNotFoundError`` (callers say what was expected there).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read ({exc.strerror})", where=path) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "UTF-16"
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-16 text (byte {exc.start})", where=path) from None
    if b"\x00" in data[:400]:  # text never holds NUL; UTF-16 text is half NULs
        raise DataError(
            "looks like UTF-16 text without a byte-order mark; save it as UTF-8", where=path
        )
    try:
        return data.decode("utf-8-sig"), "UTF-8"
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte {exc.start}); save it as UTF-8", where=path
        ) from None


def _header_error(path: Path, header_line: str, columns: list[str]) -> DataError:
    found = ",".join(columns) if len(columns) > 1 else header_line.strip()
    found = found or "nothing"
    other = next((sep for sep in _SEPARATORS if sep in header_line), None)
    separator = (
        f"; the header is separated by {_SEPARATORS[other]}, metadata.csv needs commas"
        if other is not None and len(columns) <= 1
        else ""
    )
    return DataError(
        f"the header must name an image column ({', '.join(FILE_COLUMNS)}) and a "
        f"caption column ({', '.join(TEXT_COLUMNS)}); found {found!r}{separator}",
        where=f"{path}:1",
    )


def read_table(path: str | Path, *, need_text: bool = False) -> MetadataTable:
    """The parsed ``metadata.csv`` at ``path`` (see the module doc for the rule).

    ``need_text``: a header without a caption column is an error too (training needs one;
    labeling adds it).
    """
    path = Path(path)
    text, encoding = read_text(path)
    lines = text.splitlines()
    header_line = next((line for line in lines if line.strip()), "")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((row for row in reader if any(c.strip() for c in row)), None)
        if header is None:
            raise DataError(f"empty file (expected a header {','.join(COLUMNS)})", where=path)
        columns = [c.strip() for c in header]
        file_column = next((c for c in FILE_COLUMNS if c in columns), None)
        text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
        if file_column is None or (need_text and text_column is None):
            raise _header_error(path, header_line, columns)
        table = MetadataTable(path, columns, file_column=file_column, text_column=text_column)
        table.control_column = next((c for c in CONTROL_COLUMNS if c in columns), None)
        table.encoding = encoding
        last = text_column is not None and columns.index(text_column) == len(columns) - 1
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(columns):
                if not last:
                    raise DataError(
                        f"{len(row)} fields but the header has {len(columns)}; "
                        "put captions that contain commas in double quotes",
                        where=f"{path}:{line}",
                    )
                row = [*row[: len(columns) - 1], ",".join(row[len(columns) - 1 :])]
            values = dict(zip(columns, row, strict=False))
            table.rows.append({c: values.get(c, "") for c in columns})
            table.lines.append(line)
    except csv.Error as exc:
        raise DataError(f"not valid CSV ({exc})", where=f"{path}:{reader.line_num}") from None
    return table


def read_metadata(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a ``metadata.csv`` (:func:`read_table`), for rewriting it.

    A table without a caption column gets a ``text`` column (empty) at the end.
    """
    table = read_table(path)
    columns = list(table.columns)
    if table.text_column is None:
        columns.append("text")
    return columns, [{c: row.get(c, "") for c in columns} for row in table.rows]


def format_metadata(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    """The CSV text of a table: UTF-8, ``\\n`` line ends, quoted only where needed."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
