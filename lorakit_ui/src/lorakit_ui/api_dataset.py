"""``POST /api/dataset``: the form's training data as its backend reads it (the dataset view).

The form is checked as Validate checks it (an invalid form is answered with its error and
key); the config's backend then reads the data with its own readers, checks and buckets
(:meth:`lorakit.api.BackendPlugin.inspect_data`), in a thread. Image rows name their folder
and file so the page shows each through ``/api/image`` (bounded, link-free), and a folder
whose captions are its ``metadata.csv`` is edited through ``/api/metadata``: the one reader
and writer of that file, which training reads too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from lorakit.api import METADATA_NAME, LorakitError, get_registries
from lorakit_ui.api_config import Form
from lorakit_ui.errors import BadBody, error, json_body

#: Rows the view shows (each image is decoded to check it).
ROW_LIMIT = 500


def editable(config: Any, folder: str) -> bool:
    """Whether the captions of ``folder`` are its own metadata.csv (the file the page edits)."""
    given = getattr(config.section, "metadata_path", None)
    own = Path(folder) / METADATA_NAME
    return own.is_file() and (not given or Path(given).resolve() == own.resolve())


def inspect(form: Form) -> dict[str, Any]:
    checked = form.check()
    if checked.error is not None:
        return {"ok": False, "error": checked.error, "key": checked.key}
    config = checked.config
    try:
        backend = get_registries().backends.get(config.backend)
        report = backend.inspect_data(config, ROW_LIMIT)
    except LorakitError as exc:
        return {"ok": False, "error": exc.format(), "key": "train_data_dir"}
    data = report.as_dict()
    folders = {row.folder for row in report.rows if row.folder}
    data["editable"] = sorted(
        f for f in folders if report.format == "metadata_csv" and editable(config, f)
    )
    return {"ok": True, **data}


async def api_dataset(request: Request) -> JSONResponse:
    try:
        form = Form(request.app.state.runs, await json_body(request))
    except BadBody as exc:
        return error(exc)
    return JSONResponse(await run_in_threadpool(inspect, form))
