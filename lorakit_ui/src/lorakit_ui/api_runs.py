"""The runs' JSON routes (list, one run, stop, resume) and a run's files (downloads, the
adapter folder as one zip). Everything that reads the disk runs off the event loop, and
every file is read through ``RunFolder``: a link inside a run is neither served nor zipped."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lorakit.api import LorakitError, RunFolder
from lorakit_ui.errors import error
from lorakit_ui.files import handle_response
from lorakit_ui.runs import RunManager, read_metrics

#: The most a folder's zip holds (it is built in memory).
ZIP_LIMIT = 4 * 2**30

INLINE = (".png", ".jpg", ".jpeg", ".webp", ".txt", ".mp4", ".webm")


async def api_runs(request: Request) -> JSONResponse:
    runs = request.app.state.runs
    listed, notes = await run_in_threadpool(runs.listing)
    return JSONResponse({"runs": listed, "notes": notes})


def _run_data(runs: RunManager, name: str, since: int) -> dict:
    out = runs.path_of(name)
    data = runs.summary(name)
    data.update(
        metrics=read_metrics(out, since),
        since=since,
        samples=runs.samples(name),
        downloads=runs.downloads(name),
        log=runs.log_tail(name),
        config=runs.config_text(name),
    )
    return data


async def api_run(request: Request) -> JSONResponse:
    runs = request.app.state.runs
    try:
        since = int(request.query_params.get("since", "0"))
        data = await run_in_threadpool(_run_data, runs, request.path_params["name"], since)
    except (LorakitError, ValueError) as exc:
        return error(exc, 404)
    return JSONResponse(data)


async def api_stop(request: Request) -> JSONResponse:
    runs = request.app.state.runs
    try:
        await run_in_threadpool(runs.stop, request.path_params["name"])
    except LorakitError as exc:
        return error(exc, 409)
    return JSONResponse({"ok": True})


async def api_resume(request: Request) -> JSONResponse:
    runs = request.app.state.runs
    try:
        name = await run_in_threadpool(runs.resume, request.path_params["name"])
    except LorakitError as exc:
        return error(exc, 409)
    return JSONResponse({"ok": True, "name": name})


async def run_file(request: Request) -> Response:
    runs = request.app.state.runs
    name, rel = request.path_params["name"], request.path_params["rel"]
    try:
        handle, filename = await run_in_threadpool(runs.file, name, rel)
    except LorakitError as exc:
        return Response(exc.format(), 404, media_type="text/plain")
    suffix = PurePosixPath(filename).suffix.lower()
    binary = "application/octet-stream" if suffix == ".safetensors" else None
    return handle_response(handle, filename, inline=suffix in INLINE, media_type=binary)


def _zip(run: RunFolder, rel: str) -> bytes:
    """The regular files below ``rel`` (links skipped), as a zip named after the folder."""
    buffer = io.BytesIO()
    base = PurePosixPath(rel).name
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in run.files(rel):
            inside = PurePosixPath(path).relative_to(rel).as_posix()
            archive.writestr(f"{base}/{inside}", run.read_bytes(path, limit=ZIP_LIMIT))
    return buffer.getvalue()


async def run_zip(request: Request) -> Response:
    """A folder of a run (the llm ``adapter/``) as one .zip download."""
    runs = request.app.state.runs
    name, rel = request.path_params["name"], request.path_params["rel"]
    try:
        run, folder = await run_in_threadpool(runs.folder, name, rel)
        data = await run_in_threadpool(_zip, run, folder)
    except (LorakitError, OSError) as exc:
        text = exc.format() if isinstance(exc, LorakitError) else str(exc)
        return Response(text, 404, media_type="text/plain")
    disposition = f'attachment; filename="{PurePosixPath(folder).name}.zip"'
    return Response(
        data, media_type="application/zip", headers={"content-disposition": disposition}
    )
