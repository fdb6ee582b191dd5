"""Labeling a folder and editing its metadata.csv; the images for the table's thumbnails.
Labeling, scanning a folder and writing the file run off the event loop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lorakit.api import (
    FILE_COLUMNS,
    METADATA_NAME,
    LorakitError,
    RunFolder,
    find_images,
    format_metadata,
    get_registries,
    write_text,
)
from lorakit.app import describe_options, parse_options, read_metadata, validate_options
from lorakit_ui.errors import BadBody, error, json_body
from lorakit_ui.files import handle_response

#: The largest image the table shows.
IMAGE_LIMIT = 256 * 2**20


#: Bounds on what a label request may carry (a prompt is the longest value).
MAX_OPTIONS = 32
MAX_KEY = 64
MAX_VALUE = 4096
MAX_TEXT = 4096
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class BadLabel(ValueError):
    """A label request refused before anything runs: one line."""


def _text(body: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadLabel(f"{key}: expected text")
    text = str(value)
    if len(text) > limit:
        raise BadLabel(f"{key}: longer than {limit} characters")
    if "\x00" in text:
        raise BadLabel(f"{key}: contains a NUL character")
    return text


def _options(body: dict[str, Any]) -> list[str]:
    """The request's ``options`` as ``KEY=VALUE`` pairs, as ``--option`` takes them; an
    empty value is left out (the labeler's default)."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadLabel("options: expected an object of option names and values")
    if len(options) > MAX_OPTIONS:
        raise BadLabel(f"options: more than {MAX_OPTIONS}")
    pairs = []
    for key in options:
        if len(key) > MAX_KEY or not KEY.fullmatch(key):
            raise BadLabel(f"options: {key[:MAX_KEY]!r} is not an option name")
        text = _text(options, key, MAX_VALUE)
        if text != "":
            pairs.append(f"{key}={text}")
    return pairs


def label_command(body: dict[str, Any]) -> list[str]:
    """``lorakit label ... -- FOLDER`` for a label request, checked first: a known labeler,
    its options by the validation ``lorakit label --option`` runs (an unknown key or a bad
    value is a :class:`BadLabel`, one line), bounded lengths. Every value travels inside
    its own ``--name=value`` argument and the folder goes after ``--``, so a value that
    starts with ``-`` stays a value."""
    name = _text(body, "labeler", MAX_KEY)
    pairs = _options(body)
    try:
        spec = get_registries().labelers.get(name)
        validate_options(spec, parse_options(pairs))
    except LorakitError as exc:
        raise BadLabel(exc.format()) from None
    command = [sys.executable, "-m", "lorakit.cli", "label", f"--labeler={name}", "--no-progress"]
    command += [f"--option={pair}" for pair in pairs]
    if prefix := _text(body, "prefix", MAX_KEY * 4):
        command.append(f"--prefix={prefix}")
    if batch := _text(body, "batch_size", 8):
        if not batch.isdigit() or not 1 <= int(batch) <= 4096:
            raise BadLabel(f"batch_size: expected a whole number from 1 to 4096 (got {batch!r})")
        command.append(f"--batch-size={int(batch)}")
    if body.get("mode") in ("append", "overwrite"):
        command.append(f"--{body['mode']}")
    return [*command, "--", _text(body, "data_dir")]


async def api_labelers(request: Request) -> JSONResponse:
    """Each installed labeler and its options, from the declaration ``--option`` checks."""
    registries = get_registries()
    labelers = []
    for name in registries.labelers.names():
        spec = registries.labelers.get(name)
        labelers.append(
            {"name": name, "description": spec.description, "options": describe_options(spec)}
        )
    return JSONResponse({"labelers": labelers})


async def api_label(request: Request) -> JSONResponse:
    try:
        command = label_command(await json_body(request))
    except (BadBody, BadLabel) as exc:
        return error(exc)
    done = await run_in_threadpool(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    output = (done.stdout + done.stderr).strip()
    failure = None
    if done.returncode != 0:
        lines = [ln for ln in output.splitlines() if ln.startswith("lorakit: error:")]
        failure = lines[-1] if lines else (output.splitlines()[-1:] or ["labeling failed"])[0]
    return JSONResponse({"ok": done.returncode == 0, "output": output, "error": failure})


def _read_table(folder: Path) -> JSONResponse:
    try:
        columns, rows = read_metadata(folder / METADATA_NAME)
    except FileNotFoundError:
        return error(f"{folder / METADATA_NAME}: no such file", 404)
    except (LorakitError, OSError) as exc:
        return error(exc)
    return JSONResponse({"columns": columns, "rows": rows, "data_dir": str(folder)})


def _write_table(body: dict[str, Any]) -> JSONResponse:
    folder = Path(str(body.get("data_dir") or ""))
    columns = [str(c) for c in body.get("columns") or []]
    rows = [
        {str(k): str(v) for k, v in r.items()}
        for r in body.get("rows") or []
        if isinstance(r, dict)
    ]
    file_column = next((c for c in FILE_COLUMNS if c in columns), None)
    if file_column is None:  # the rule training reads the table by (lorakit.api.read_table)
        return error(f"metadata.csv needs an image column ({', '.join(FILE_COLUMNS)})")
    if not rows:
        return error(f"{folder / METADATA_NAME}: no rows to write (the file is left as it is)")
    known = set(find_images(folder))
    missing = [r.get(file_column, "") for r in rows if r.get(file_column) not in known]
    if missing:
        return error(f"{folder}: no image named {missing[0]}")
    write_text(folder / METADATA_NAME, format_metadata(columns, rows))
    return JSONResponse({"ok": True, "path": str(folder / METADATA_NAME)})


async def api_metadata(request: Request) -> JSONResponse:
    if request.method == "GET":
        folder = Path(request.query_params.get("data_dir", ""))
        return await run_in_threadpool(_read_table, folder)
    try:
        body = await json_body(request)
    except BadBody as exc:
        return error(exc)
    return await run_in_threadpool(_write_table, body)


def _image(folder: Path, name: str) -> Any:
    """The image ``name`` of a dataset folder, opened without following links (a link to
    a file elsewhere is not served), or None."""
    if name not in set(find_images(folder)):
        return None
    try:
        return RunFolder(folder).open(name, limit=IMAGE_LIMIT)
    except (OSError, LorakitError):
        return None


async def api_image(request: Request) -> Response:
    folder = Path(request.query_params.get("data_dir", ""))
    name = request.query_params.get("name", "")
    handle = await run_in_threadpool(_image, folder, name)
    if handle is None:
        return Response("not found", 404, media_type="text/plain")
    return handle_response(handle, Path(name).name, inline=True)
