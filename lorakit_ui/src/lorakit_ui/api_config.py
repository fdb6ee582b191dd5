"""The new-run form's routes: validate, save, start. Checking a config imports the backend's
schema and may plan memory: every call runs off the event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from lorakit.api import LorakitError, get_registries
from lorakit_ui import forms
from lorakit_ui.errors import BadBody, error, json_body


class Form:
    """A posted form: values, backend, the config path and the file's header line."""

    def __init__(self, runs: Any, body: dict[str, Any]) -> None:
        raw = body.get("values") or {}
        if not isinstance(raw, dict):
            raise BadBody("values must be a JSON object")
        self.values = {str(k): "" if v is None else str(v) for k, v in raw.items()}
        self.backend = str(body.get("backend") or "")
        try:
            get_registries().backends.get(self.backend)
        except LorakitError as exc:
            raise BadBody(exc.format()) from None
        given = self.values.pop("config_path", "").strip()
        if given:
            path = Path(given).expanduser()
            self.path = path if path.is_absolute() else runs.runs_dir / path
        else:  # each run its own file, derived from its output_dir
            out = self.values.get("output_dir", "").strip() or str(runs.runs_dir / "my_lora")
            self.path = forms.default_config_path(Path(out).expanduser())
        template = body.get("template") or ""
        self.header = (
            f"# lorakit config, written by lorakit ui from the {self.backend} template {template}\n"
        )

    def check(self, plan: bool = False) -> forms.Checked:
        return forms.check(self.values, self.backend, self.path, self.header, plan=plan)


async def _form(request: Request) -> Form:
    return Form(request.app.state.runs, await json_body(request))


async def api_validate(request: Request) -> JSONResponse:
    try:
        form = await _form(request)
    except BadBody as exc:
        return error(exc)
    checked = await run_in_threadpool(form.check, True)
    return JSONResponse({**checked.as_dict(), "path": str(form.path)})


async def api_save(request: Request) -> JSONResponse:
    try:
        form = await _form(request)
    except BadBody as exc:
        return error(exc)
    checked = await run_in_threadpool(forms.save, form.values, form.backend, form.path, form.header)
    return JSONResponse({**checked.as_dict(), "path": str(form.path)})


def start(runs: Any, form: Form) -> dict[str, Any]:
    """Check the form, then start it; a refused start writes no file."""
    checked = form.check()
    result = {**checked.as_dict(), "path": str(form.path)}
    if checked.error is not None:
        return result
    try:
        runs.name_of(checked.output_dir or "")
    except LorakitError as exc:
        return {**result, "ok": False, "error": exc.format(), "key": "output_dir"}
    try:
        result["name"] = runs.start(
            form.path,
            checked.output_dir or "",
            write=lambda: forms.write_config(form.path, checked.text),
            backend=form.backend,
        )
    except LorakitError as exc:
        # a folder in use or holding an earlier run: beside output_dir
        key = "output_dir" if "output_dir" in str(exc) else None
        result.update(ok=False, error=exc.format(), key=key)
    return result


async def api_start(request: Request) -> JSONResponse:
    try:
        form = await _form(request)
    except BadBody as exc:
        return error(exc)
    return JSONResponse(await run_in_threadpool(start, request.app.state.runs, form))
