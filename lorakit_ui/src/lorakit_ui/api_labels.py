"""Labeling a folder and editing its metadata.csv; the images for the table's thumbnails.
Labeling, scanning a folder and writing the file run off the event loop."""

from __future__ import annotations

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
    write_text,
)
from lorakit.app import read_metadata
from lorakit_ui.errors import BadBody, error, json_body
from lorakit_ui.files import handle_response

#: The largest image the table shows.
IMAGE_LIMIT = 256 * 2**20


def label_command(body: dict[str, Any]) -> list[str]:
    """``lorakit label FOLDER ...``; the folder goes after ``--``, so a value that starts
    with ``-`` is a folder name, never an option."""
    command = [
        sys.executable,
        "-m",
        "lorakit.cli",
        "label",
        "--labeler",
        str(body.get("labeler") or ""),
    ]
    command.append("--no-progress")
    if body.get("prefix"):
        command += ["--prefix", str(body["prefix"])]
    if body.get("mode") in ("append", "overwrite"):
        command.append(f"--{body['mode']}")
    return [*command, "--", str(body.get("data_dir") or "")]


async def api_label(request: Request) -> JSONResponse:
    try:
        body = await json_body(request)
    except BadBody as exc:
        return error(exc)
    done = await run_in_threadpool(
        subprocess.run,
        label_command(body),
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
