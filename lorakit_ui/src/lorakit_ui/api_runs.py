"""The runs' JSON routes (list, one run, stop, resume) and a run's files (downloads, the
adapter folder as one zip). Everything that reads the disk runs off the event loop."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from lorakit.api import LorakitError
from lorakit_ui.errors import error
from lorakit_ui.runs import read_metrics

INLINE = (".png", ".jpg", ".jpeg", ".webp", ".txt")


async def api_runs(request: Request) -> JSONResponse:
    runs = request.app.state.runs
    listed, notes = await run_in_threadpool(runs.listing)
    return JSONResponse({"runs": listed, "notes": notes})


def _run_data(runs, name: str, since: int) -> dict:
    out = runs.path_of(name)
    data = runs.summary(name)
    data.update(
        metrics=read_metrics(out / "metrics.jsonl", since), since=since,
        samples=runs.samples(name), downloads=runs.downloads(name), log=runs.log_tail(name),
        config=runs.config_text(name),
    )  # fmt: skip
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
        path = await run_in_threadpool(runs.file, name, rel)
    except LorakitError as exc:
        return Response(exc.format(), 404, media_type="text/plain")
    inline = path.suffix.lower() in INLINE
    return FileResponse(
        path,
        filename=None if inline else path.name,
        media_type="application/octet-stream" if path.suffix == ".safetensors" else None,
    )


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


async def run_zip(request: Request) -> Response:
    """A folder of a run (the llm ``adapter/``) as one .zip download."""
    runs = request.app.state.runs
    name, rel = request.path_params["name"], request.path_params["rel"]
    try:
        folder = await run_in_threadpool(runs.folder, name, rel)
    except LorakitError as exc:
        return Response(exc.format(), 404, media_type="text/plain")
    data = await run_in_threadpool(_zip, folder)
    disposition = f'attachment; filename="{folder.name}.zip"'
    return Response(
        data, media_type="application/zip", headers={"content-disposition": disposition}
    )
