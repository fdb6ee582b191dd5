"""Image-folder dataset readers: ``metadata.csv``, ``metadata.jsonl``, ``.txt`` sidecars.

Each reader turns a folder into records ``{"image", "caption", "where", "error", "control"}``
(``control``: the control images of an edit dataset, from a ``control`` column or key, as
paths; empty otherwise). A record
whose ``error`` is set names what is wrong (file and line); the backend then fails with one
line naming the files, or skips them when ``sd.skip_bad_images`` is on. Nothing is dropped
silently. The readers import only the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lorakit.api import (
    CONTROL_COLUMNS,
    FILE_COLUMNS,
    IMAGE_EXTENSIONS,
    METADATA_NAME,
    TEXT_COLUMNS,
    DataError,
    is_image_name,
    read_table,
    read_text,
    split_control,
)
from lorakit_sd.data.video import VIDEO_EXTENSIONS, is_clip_name

Record = dict[str, Any]


def _record(
    image: Path | str,
    caption: str | None,
    where: str,
    error: str | None,
    control: list[str] | None = None,
) -> Record:
    return {
        "image": str(image),
        "caption": caption,
        "where": where,
        "error": error,
        "control": control or [],
    }


def is_media_name(path: Path) -> bool:
    """Whether ``path`` names an image or a video clip (video families train on both)."""
    return is_image_name(path) or is_clip_name(path)


def image_files(root: Path) -> list[Path]:
    """Images and clips directly in ``root`` (not in subfolders), sorted by name."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    return sorted(p for p in root.iterdir() if is_media_name(p) and p.is_file())


def resolve_inside(root: Path, name: str) -> tuple[Path | None, str | None]:
    """``root / name`` unless ``name`` is empty, absolute, or leaves ``root``."""
    if not name or not name.strip():
        return None, "empty file_name"
    if os.path.isabs(name) or name.startswith(("~", "\\")):
        return None, f"{name}: absolute path (file_name must be relative to the data folder)"
    full = Path(os.path.normpath(root / name))
    try:
        full.relative_to(Path(os.path.normpath(root)))
    except ValueError:
        return None, f"{name}: path leaves the data folder {root}"
    escape = leaves_folder(root, full)
    if escape:
        return None, f"{name}: {escape}"
    return full, None


def leaves_folder(root: Path, path: Path) -> str | None:
    """Why ``path`` (inside ``root`` by name) really lies outside it, through a link."""
    try:
        target = path.resolve()
        target.relative_to(root.resolve())
    except ValueError:
        return f"a link that leaves the data folder {root} (to {target})"
    except OSError as exc:
        return f"cannot resolve ({exc.strerror})"
    return None


Row = tuple[str, str | None, str, list[str]]


def _controls(root: Path, name: str, controls: list[str]) -> tuple[list[str], str | None]:
    """The control images of a row as paths inside ``root``, or the first problem."""
    paths = []
    for control in controls:
        path, error = resolve_inside(root, control)
        if path is None:
            return [], f"{name}: control image {error}"
        if not path.is_file():
            return [], f"{name}: control image not found: {control}"
        paths.append(str(path))
    return paths, None


def _finish(root: Path, rows: Iterator[Row], source: Path) -> list[Record]:
    """Records from ``(file_name, text, where, controls)`` rows: checks names, files and
    captions, and that every control image is a file inside the folder."""
    records: list[Record] = []
    seen: dict[str, str] = {}
    for name, text, where, control_names in rows:
        path, error = resolve_inside(root, name)
        if path is None:
            records.append(_record(root / (name or "?"), None, where, error))
            continue
        key = str(path)
        if key in seen:
            records.append(_record(path, None, where, f"{name}: listed twice (also {seen[key]})"))
            continue
        seen[key] = where
        controls, control_error = _controls(root, name, control_names)
        if not path.is_file():
            records.append(_record(path, None, where, f"{name}: image not found"))
        elif control_error:
            records.append(_record(path, None, where, control_error))
        elif text is None or not text.strip():
            records.append(_record(path, None, where, f"{name}: missing caption"))
        else:
            records.append(_record(path, text.strip(), where, None, controls))
    if not records:
        raise DataError(f"{source}: no images listed")
    return records


def unlisted_images(root: Path, records: list[Record]) -> list[Path]:
    """Images in ``root`` that no record mentions as an image or a control image (reported,
    not trained on)."""
    listed = {os.path.normpath(p) for r in records for p in (r["image"], *r.get("control", []))}
    return [p for p in image_files(root) if os.path.normpath(p) not in listed]


def read_metadata_csv(path: str | Path, metadata_path: str | Path | None = None) -> list[Record]:
    """``metadata.csv`` (``datasets``' imagefolder layout), by the one rule of
    ``lorakit.api.read_table`` that ``lorakit label`` and the web page follow too."""
    root = Path(path)
    meta = Path(metadata_path) if metadata_path else root / METADATA_NAME
    if not meta.is_file():
        raise DataError(f"{meta}: captions file not found")
    table = read_table(meta, need_text=True)
    text_column = table.text_column or "text"

    def rows() -> Iterator[Row]:
        for row, line in zip(table.rows, table.lines, strict=True):
            control = split_control(row[table.control_column]) if table.control_column else []
            yield row[table.file_column].strip(), row[text_column], f"{meta}:{line}", control

    return _finish(root, rows(), meta)


def read_metadata_jsonl(path: str | Path, metadata_path: str | Path | None = None) -> list[Record]:
    """``metadata.jsonl``: one ``{"file_name": ..., "text": ...}`` object per line."""
    root = Path(path)
    meta = Path(metadata_path) if metadata_path else root / "metadata.jsonl"
    if not meta.is_file():
        raise DataError(f"{meta}: captions file not found")
    lines = read_text(meta)[0].splitlines()

    def rows() -> Iterator[Row]:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{meta}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object")
            name = next((obj[c] for c in FILE_COLUMNS if c in obj), None)
            if not isinstance(name, str):
                raise DataError(f"{where}: no file_name")
            caption = next((obj[c] for c in TEXT_COLUMNS if c in obj), None)
            yield (
                name.strip(),
                caption if isinstance(caption, str) else None,
                where,
                _jsonl_control(obj, where),
            )

    return _finish(root, rows(), meta)


def _jsonl_control(obj: dict[str, Any], where: str) -> list[str]:
    """A JSON line's control images: a ``control`` string (``a.png|b.png``) or list."""
    value = next((obj[c] for c in CONTROL_COLUMNS if c in obj), None)
    if value is None:
        return []
    if isinstance(value, str):
        return split_control(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise DataError(f"{where}: control must be a file name or a list of file names")


#: Caption sidecar extensions kohya users keep; the configured one is tried first.
SIDECAR_EXTENSIONS = (".txt", ".caption")


def read_caption_files(
    path: str | Path, caption_extension: str = ".txt", default_caption: str | None = None
) -> list[Record]:
    """Every image in the folder with a caption file beside it (``cat.png`` + ``cat.txt``).

    The configured extension is tried first, then the other of ``.txt`` / ``.caption``. An
    image without one takes ``default_caption`` (a kohya folder's class token) if given.
    """
    root = Path(path)
    images = image_files(root)
    if not images:
        kinds = ", ".join(dict.fromkeys(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
        raise DataError(f"{root}: no images or clips ({kinds})")
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    extensions = [ext] + [e for e in SIDECAR_EXTENSIONS if e != ext]
    records = []
    for image in images:
        escape = leaves_folder(root, image)
        if escape:
            records.append(_record(image, None, str(image), f"{image.name}: {escape}"))
            continue
        sidecar = next(
            (image.with_suffix(e) for e in extensions if image.with_suffix(e).is_file()),
            image.with_suffix(ext),
        )
        try:
            caption = sidecar.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            if default_caption:
                records.append(_record(image, default_caption, f"{image} (class token)", None))
                continue
            records.append(_record(image, None, str(image), f"{image.name}: no {ext} caption file"))
            continue
        except (UnicodeDecodeError, OSError) as exc:
            records.append(
                _record(image, None, str(sidecar), f"{sidecar.name}: unreadable ({exc})")
            )
            continue
        caption = " ".join(caption.split())
        error = None if caption else f"{sidecar.name}: empty caption"
        records.append(_record(image, caption or None, str(sidecar), error))
    return records


KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


def kohya_subfolders(root: Path) -> list[tuple[Path, int, str]]:
    """``(folder, repeats, class token)`` of each ``N_name`` subfolder (kohya's layout)."""
    if not root.is_dir():
        return []
    out = []
    for sub in sorted(root.iterdir()):
        m = KOHYA_FOLDER.match(sub.name)
        if m and sub.is_dir() and int(m[1]) > 0:
            out.append((sub, int(m[1]), m[2].strip()))
    return out


def detect_format(root: Path, metadata_path: str | None) -> str:
    """Which reader fits a folder: by metadata_path's extension, else by what is there."""
    if metadata_path:
        suffix = Path(metadata_path).suffix.lower()
        if suffix == ".jsonl":
            return "metadata_jsonl"
        if suffix == ".csv":
            return "metadata_csv"
        raise DataError(f"{metadata_path}: captions file must end in .csv or .jsonl")
    if (root / METADATA_NAME).is_file():
        return "metadata_csv"
    if (root / "metadata.jsonl").is_file():
        return "metadata_jsonl"
    return "caption_files"


def detect_csv(path: Any) -> bool:
    return (Path(path) / METADATA_NAME).is_file()


def detect_jsonl(path: Any) -> bool:
    return (Path(path) / "metadata.jsonl").is_file()


def detect_caption_files(path: Any) -> bool:
    root = Path(path)
    return root.is_dir() and any(p.with_suffix(".txt").is_file() for p in image_files(root))


def format_problems(problems: list[str], limit: int = 3) -> str:
    """``a; b; c (+N more)``: a one-line list of problems."""
    shown = "; ".join(problems[:limit])
    more = len(problems) - limit
    return f"{shown} (+{more} more)" if more > 0 else shown
