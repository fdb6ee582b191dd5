"""Auto-labeling: the :class:`Labeler` interface plugins implement, and the driver behind
``lorakit label`` that writes ``metadata.csv``.

A labeler turns a batch of images into one caption each. Plugins register it with
``register(LabelerSpec(name, factory, description, options_model))``; ``factory(**options)``
must be cheap (check the options, load nothing) and return a :class:`Labeler`, whose
:meth:`~Labeler.setup` loads models only once there is something to label.

:func:`label_folder` scans a folder for images (natural sort order; subfolders on request,
listed by their relative path), reads them (unreadable ones are reported, not fatal), feeds
them to the labeler in batches and writes ``metadata.csv`` (columns ``file_name,text``, the
layout the sd backend and the ``datasets`` imagefolder loader read) atomically. The same
inputs give the same bytes.

PIL is imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lorakit.clips import VIDEO_EXTENSIONS, clip_first_frame, is_clip_name
from lorakit.errors import DataError, LorakitError, RunError, UsageError
from lorakit.images import IMAGE_EXTENSIONS, decode_rgb, is_image_name
from lorakit.metadata_csv import (
    COLUMNS,
    CONTROL_COLUMNS,
    FILE_COLUMNS,
    METADATA_NAME,
    TEXT_COLUMNS,
    format_metadata,
    read_metadata,
    split_control,
)
from lorakit.progress import Bar

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from lorakit.registry import LabelerSpec, Registries

#: The default batch size of a labeler that does not say.
DEFAULT_BATCH_SIZE = 8

Mode = Literal["new", "overwrite", "append"]


class Labeler(ABC):
    """Captions or tags images, a batch at a time.

    Subclasses implement :meth:`label`; :meth:`setup` and :meth:`teardown` are optional.
    ``batch_size`` is how many images one :meth:`label` call gets (``--batch-size``
    overrides it). Any object with a ``label(images, paths)`` method works with
    :func:`label_folder`; subclassing this class gives the defaults.
    """

    #: Images per :meth:`label` call.
    batch_size: int = DEFAULT_BATCH_SIZE

    def setup(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Load models and other heavy state; called once, before the first batch."""

    @abstractmethod
    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        """One caption per image, in order.

        ``images`` are RGB (EXIF rotation applied, transparency flattened onto white);
        ``paths`` are the files they came from, for labelers that read names or sidecars.
        """

    def teardown(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Free what :meth:`setup` loaded; called once, even when labeling failed."""


@dataclass
class LabelReport:
    """What :func:`label_folder` did (or, with ``dry_run``, would do)."""

    metadata_path: Path
    #: The columns and rows of the table as written (or as it would be written).
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    #: Images found in the folder.
    found: int = 0
    #: Images already listed in the existing table (``append``) and left as they were.
    kept: int = 0
    #: File names labeled in this run.
    labeled: list[str] = field(default_factory=list)
    #: ``(file_name, reason)`` of each image that could not be read; it is not listed.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: File names whose labeler caption was empty.
    empty: list[str] = field(default_factory=list)
    #: Whether the table was written to disk.
    written: bool = False
    dry_run: bool = False
    #: The CSV text (written, or what would have been written).
    csv_text: str = ""


# -- options ---------------------------------------------------------------------------


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` (from ``--option``) as a dict; a pair without ``=`` is an error."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option top_k=5")
        options[key] = value
    return options


def validate_options(spec: LabelerSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` against the labeler's pydantic ``options_model``.

    Returns the validated values (defaults filled in) to pass to ``spec.factory``. An
    unknown key or a value of the wrong type is a :class:`UsageError` naming the option.
    """
    model = spec.options_model
    if model is None:
        if options:
            raise UsageError(f"labeler {spec.name} takes no options (got {', '.join(options)})")
        return {}
    fields: dict[str, Any] = getattr(model, "model_fields", {})
    for key in options:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"labeler {spec.name} has no option '{key}' (options: {known}){hint}")
    from pydantic import ValidationError

    try:
        validated = model.model_validate(dict(options))  # type: ignore[attr-defined]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "options"
        got = f" (got {error['input']!r})" if where in options else ""
        raise UsageError(f"labeler {spec.name}: option {where}: {error['msg']}{got}") from None
    values: dict[str, Any] = validated.model_dump()
    return values


def describe_options(spec: LabelerSpec) -> list[dict[str, Any]]:
    """The options ``--option`` takes for this labeler, read from its ``options_model``
    (the same declaration :func:`validate_options` checks), for a form.

    One dict per option, the labeler's own options before the inherited ones: ``name``,
    ``kind`` (``text``, ``integer``, ``number`` or ``choice``), ``default`` (as text, ``""``
    for none), ``description``, ``choices`` (a ``choice``'s values; ``false``/``true`` for a
    flag) and ``minimum``/``maximum`` where declared.
    """
    import typing

    model = spec.options_model
    fields: dict[str, Any] = getattr(model, "model_fields", {}) if model else {}
    order = [
        n for cls in getattr(model, "__mro__", ()) for n in vars(cls).get("__annotations__", {})
    ]
    described = []
    for name in sorted(fields, key=lambda n: order.index(n) if n in order else len(order)):
        info = fields[name]
        kind, choices = "text", []
        if info.annotation is bool:
            kind, choices = "choice", ["false", "true"]
        elif typing.get_origin(info.annotation) is Literal:
            kind, choices = "choice", [str(c) for c in typing.get_args(info.annotation)]
        elif info.annotation in (int, float):
            kind = "integer" if info.annotation is int else "number"
        default = info.get_default(call_default_factory=True)
        item: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "default": ""
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default),
            "description": info.description or "",
            "choices": choices,
        }
        for bound in info.metadata:
            for key, attr in (("minimum", "ge"), ("maximum", "le")):
                if getattr(bound, attr, None) is not None:
                    item[key] = getattr(bound, attr)
        described.append(item)
    return described


def create_labeler(
    name: str, options: Mapping[str, Any] | None = None, registries: Registries | None = None
) -> Labeler:
    """The labeler registered as ``name``, built with validated ``options``.

    An unknown name is a :class:`UsageError` listing the installed labelers.
    """
    if registries is None:
        from lorakit.plugins import get_registries

        registries = get_registries()
    spec = registries.labelers.get(name)
    labeler = spec.factory(**validate_options(spec, options or {}))
    if not callable(getattr(labeler, "label", None)):
        raise RunError(f"labeler {name}: its factory returned {type(labeler).__name__}, no labeler")
    return labeler


# -- images ----------------------------------------------------------------------------


def _natural_key(name: str) -> tuple[list[tuple[int, int | str]], str]:
    """Sort ``img2`` before ``img10``; ties broken by the plain name."""
    parts = re.split(r"(\d+)", name.lower())
    key = [(0, int(p)) if p.isdigit() else (1, p) for p in parts if p]
    return key, name


def find_images(data_dir: str | Path, *, recursive: bool = False) -> list[str]:
    """Image and clip files under ``data_dir`` as POSIX paths relative to it, in natural order.

    Hidden files and folders (names starting with ``.``) are skipped.
    """
    root = Path(data_dir)
    pattern = "**/*" if recursive else "*"
    found = []
    for path in root.glob(pattern):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if (is_image_name(path) or is_clip_name(path)) and path.is_file():
            found.append(rel.as_posix())
    return sorted(found, key=_natural_key)


def read_image(path: str | Path) -> Image.Image:
    """Open, fully decode and normalise an image to 8-bit RGB (:func:`lorakit.images.decode_rgb`).

    EXIF rotation is applied, wide modes (16-bit, float) are scaled, transparency is
    flattened onto white and an animation gives its first frame. Raises
    ``OSError``/``ValueError`` (and PIL's decompression-bomb error) for a file that is not a
    readable image, including a truncated one. A clip (:mod:`lorakit.clips`) gives its first
    frame, after every frame is decoded once.
    """
    if is_clip_name(path):
        return clip_first_frame(path)
    return decode_rgb(path)


def _read_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# -- captions ------------------------------------------------------------------------


def make_caption(caption: str, prefix: str | None = None) -> str:
    """One line of caption: whitespace collapsed, ``prefix`` (a trigger word) in front.

    The prefix is joined with ``", "`` and not repeated when the caption starts with it.
    """
    text = " ".join(str(caption).split())
    head = " ".join((prefix or "").split()).rstrip(",").strip()
    if not head:
        return text
    if not text:
        return head
    if text == head or text.startswith((head + ",", head + " ")):
        return text
    return f"{head}, {text}"


# -- the driver ------------------------------------------------------------------------


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_batch(
    data_dir: Path, batch: Sequence[str], report: LabelReport
) -> tuple[list[Image.Image], list[str]]:
    """The readable images of ``batch`` and their names; the others go to the report."""
    from PIL import Image

    images: list[Image.Image] = []
    names: list[str] = []
    for file_name in batch:
        try:
            images.append(read_image(data_dir / file_name))
            names.append(file_name)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            report.unreadable.append((file_name, _read_reason(exc)))
    return images, names


def _label_batch(
    labeler: Labeler, name: str, data_dir: Path, images: list[Image.Image], names: list[str]
) -> list[str]:
    """``labeler.label`` on one batch, its failures and wrong answers as one-line errors."""
    try:
        result = labeler.label(images, [data_dir / n for n in names])
    except (LorakitError, KeyboardInterrupt):
        raise
    except Exception as exc:
        from lorakit.engine.oom import is_oom

        files = f"{names[0]} .. {names[-1]}" if len(names) > 1 else names[0]
        hint = "; try a smaller --batch-size" if is_oom(exc) else ""
        raise RunError(
            f"labeler {name} failed on {files}: {type(exc).__name__}: {_read_reason(exc)}{hint}"
        ) from exc
    finally:
        for image in images:
            image.close()
    if not isinstance(result, list | tuple) or len(result) != len(names):
        count = len(result) if isinstance(result, list | tuple) else type(result).__name__
        raise RunError(f"labeler {name} returned {count} captions for {len(names)} images")
    for file_name, caption in zip(names, result, strict=True):
        if not isinstance(caption, str):
            raise RunError(
                f"labeler {name} returned a {type(caption).__name__}, not a caption, "
                f"for {file_name}"
            )
    return list(result)


def _run_labeler(
    labeler: Labeler,
    name: str,
    data_dir: Path,
    todo: Sequence[str],
    batch_size: int,
    report: LabelReport,
    captions: dict[str, str],
    on_batch: Callable[[int], None],
) -> None:
    """Caption every readable image of ``todo`` into ``captions``; fills ``report.unreadable``.

    ``captions`` is filled batch by batch, so an interrupted run keeps what it labeled.
    ``setup`` runs before the first readable image, ``teardown`` whenever ``setup`` ran.
    """
    set_up = False
    try:
        for batch in _batches(todo, batch_size):
            images, names = _read_batch(data_dir, batch, report)
            if images:
                if not set_up:
                    set_up = True
                    getattr(labeler, "setup", lambda: None)()
                result = _label_batch(labeler, name, data_dir, images, names)
                captions.update(zip(names, result, strict=True))
            on_batch(len(batch))
    finally:
        if set_up:
            getattr(labeler, "teardown", lambda: None)()


def label_folder(
    data_dir: str | Path,
    labeler: Labeler,
    *,
    mode: Mode = "new",
    prefix: str | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    recursive: bool = False,
    progress: bool = True,
    console: Console | None = None,
    name: str | None = None,
) -> LabelReport:
    """Label the images of ``data_dir`` and write ``data_dir/metadata.csv``.

    ``mode``: ``new`` refuses to replace an existing table (:class:`UsageError`),
    ``overwrite`` replaces it, ``append`` keeps its rows and labels only images it does not
    list yet. ``prefix`` (a trigger word) goes in front of every new caption. ``dry_run``
    labels but writes nothing (the text is in ``report.csv_text``). ``recursive`` also
    labels images in subfolders (``file_name`` is then ``sub/name.png``). Unreadable images are
    listed in ``report.unreadable`` and left out of the table. The labeler's ``setup`` runs
    only when there is an image to label. Ctrl-C keeps what was labeled: the table is
    written with the rows so far (except with ``overwrite``, which leaves the old table),
    so ``append`` carries on.
    """
    data_dir = Path(data_dir)
    name = name or getattr(labeler, "name", None) or type(labeler).__name__
    if mode not in ("new", "overwrite", "append"):
        raise UsageError(f"unknown mode {mode!r} (new, overwrite or append)")
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise DataError(f"{data_dir} {what}")
    metadata_path = data_dir / METADATA_NAME
    report = LabelReport(metadata_path=metadata_path, dry_run=dry_run)
    columns: list[str] = list(COLUMNS)
    existing: list[dict[str, str]] = []
    file_column = "file_name"
    if metadata_path.exists():
        if mode == "new" and not dry_run:
            raise UsageError(
                f"{metadata_path} already exists: pass --overwrite to replace it or "
                "--append to label only the images it does not list"
            )
        if mode == "append":
            columns, existing = read_metadata(metadata_path)
            file_column = next(c for c in FILE_COLUMNS if c in columns)

    images = find_images(data_dir, recursive=recursive)
    report.found = len(images)
    if not images:
        kinds = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        raise DataError(f"no images in {data_dir} (looked for {kinds})")
    listed = {row.get(file_column, "") for row in existing}
    control_column = next((c for c in CONTROL_COLUMNS if c in columns), None)
    if control_column is not None:  # an edit dataset's control images are no targets
        listed |= {name for row in existing for name in split_control(row[control_column])}
    todo = [f for f in images if f not in listed]
    report.kept = len(images) - len(todo)
    report.columns = columns
    if not todo:
        report.rows = existing
        report.csv_text = format_metadata(columns, existing)
        return report

    size = batch_size or getattr(labeler, "batch_size", None) or DEFAULT_BATCH_SIZE
    if size < 1:
        raise UsageError(f"batch size must be at least 1 (got {size})")
    bar = Bar("label", len(todo), enabled=progress, console=console)
    captions: dict[str, str] = {}
    interrupted = False
    try:
        _run_labeler(labeler, name, data_dir, todo, size, report, captions, bar.advance)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        if interrupted and mode != "overwrite" and not dry_run and captions:
            _write(report, existing, captions, prefix)
    if not captions and not existing:
        shown = "; ".join(f"{f}: {why}" for f, why in report.unreadable[:3])
        raise DataError(f"none of the {len(todo)} images in {data_dir} could be read ({shown})")
    _write(report, existing, captions, prefix, write=not dry_run)
    return report


def _write(
    report: LabelReport,
    existing: list[dict[str, str]],
    captions: dict[str, str],
    prefix: str | None,
    *,
    write: bool = True,
) -> None:
    from lorakit.io import write_text

    rows = list(existing)
    text_column = next(c for c in TEXT_COLUMNS if c in report.columns)
    for file_name, caption in captions.items():
        if not caption.strip():
            report.empty.append(file_name)
        file_column = next(c for c in FILE_COLUMNS if c in report.columns)
        rows.append({file_column: file_name, text_column: make_caption(caption, prefix)})
    report.labeled = list(captions)
    report.rows = rows
    report.csv_text = format_metadata(report.columns, rows)
    if write:
        write_text(report.metadata_path, report.csv_text)
        report.written = True
