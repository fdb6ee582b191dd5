"""The web app: server-rendered pages, a little JSON API, one small script (no build step).

Pages: ``/`` the runs, ``/new`` a new run from a template, ``/runs/NAME`` one run (live
chart, samples, log, downloads), ``/label`` labeling a folder and editing its metadata.csv.
"""

from __future__ import annotations

import contextlib
import html
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lorakit.api import (
    METADATA_NAME,
    LorakitError,
    find_images,
    format_metadata,
    get_registries,
    read_metadata,
    write_text,
)
from lorakit_ui import forms
from lorakit_ui.runs import RunManager, read_metrics

E = html.escape


def _static(name: str) -> str:
    return resources.files("lorakit_ui").joinpath(f"static/{name}").read_text(encoding="utf-8")


def page(title: str, body: str, script: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{E(title)} · lorakit</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body><header><a class="brand" href="/">lorakit</a>
<nav><a href="/">Runs</a><a href="/new">New run</a><a href="/label">Label images</a></nav></header>
<main>{body}</main>
<script src="/static/app.js"></script>{script}</body></html>"""
    )


def _error(exc: Exception, status: int = 400) -> JSONResponse:
    message = exc.format() if isinstance(exc, LorakitError) else str(exc)
    return JSONResponse({"ok": False, "error": message}, status_code=status)


class TokenMiddleware:
    """When serving beyond this machine: every request carries the token (URL or cookie)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given == self.token:
            response: Response = Response(
                status_code=303, headers={"location": scope["path"] or "/"}
            )
            response.set_cookie("lorakit_ui_token", self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        if request.cookies.get("lorakit_ui_token") != self.token:
            await Response("a token is needed: use the URL lorakit ui printed", 403)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


def create_app(
    runs_dir: str | Path, *, token: str | None = None, parallel: bool = False
) -> Starlette:
    """The app for one runs folder (``token``: required on every request when set)."""
    runs = RunManager(runs_dir, parallel=parallel)
    runs.runs_dir.mkdir(parents=True, exist_ok=True)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return Response("not found", 404)
        return Response(_static(name), media_type=types[name])

    # -- runs ------------------------------------------------------------------------------

    async def index(request: Request) -> HTMLResponse:
        body = f"""<h1>Runs</h1>
<p class="muted">in {E(str(runs.runs_dir))}</p>
<table id="runs"><thead><tr><th>run</th><th>status</th><th>steps</th><th>final loss</th>
<th>time</th><th>started</th><th></th></tr></thead><tbody></tbody></table>
<p id="runs-error" class="error"></p>"""
        return page("Runs", body, "<script>lk.runsPage()</script>")

    async def api_runs(request: Request) -> JSONResponse:
        return JSONResponse({"runs": [runs.summary(n) for n in runs.names()]})

    async def run_page(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            if not runs.path_of(name).is_dir() and name not in runs.jobs:
                return Response(f"no run named {name}", 404)
        except LorakitError as exc:
            return Response(exc.format(), 404)
        body = f"""<h1>Run <span id="run-name">{E(name)}</span></h1>
<p>status <b id="status" class="status">…</b> · step <b id="steps">0</b> / <span id="total">?</span>
· loss <b id="loss">-</b> · lr <b id="lr">-</b> · <span id="throughput">-</span>
· <span id="elapsed">-</span></p>
<p class="actions"><button id="stop" disabled>Stop (checkpoint)</button>
<button id="resume" disabled>Resume</button></p>
<p id="run-error" class="error"></p>
<section><h2>Loss</h2><svg id="loss-chart" width="640" height="240" data-points="0"
 role="img" aria-label="loss per step"></svg>
<h2>Learning rate</h2><svg id="lr-chart" width="640" height="120" data-points="0"></svg></section>
<section><h2>Downloads</h2><ul id="downloads"></ul></section>
<section><h2>Samples</h2><div id="samples" class="grid"></div></section>
<section><h2>Log</h2><pre id="log"></pre></section>"""
        return page(name, body, f"<script>lk.runPage({json.dumps(name)})</script>")

    async def api_run(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        try:
            out = runs.path_of(name)
            since = int(request.query_params.get("since", "0"))
            data = runs.summary(name)
        except (LorakitError, ValueError) as exc:
            return _error(exc, 404)
        data.update(
            metrics=read_metrics(out / "metrics.jsonl", since),
            since=since,
            samples=runs.samples(name),
            downloads=runs.downloads(name),
            log=runs.log_tail(name),
        )
        return JSONResponse(data)

    async def api_stop(request: Request) -> JSONResponse:
        try:
            runs.stop(request.path_params["name"])
        except LorakitError as exc:
            return _error(exc, 409)
        return JSONResponse({"ok": True})

    async def api_resume(request: Request) -> JSONResponse:
        try:
            name = runs.resume(request.path_params["name"])
        except LorakitError as exc:
            return _error(exc, 409)
        return JSONResponse({"ok": True, "name": name})

    async def run_file(request: Request) -> Response:
        name, rel = request.path_params["name"], request.path_params["rel"]
        try:
            path = runs.file(name, rel)
        except LorakitError as exc:
            return Response(exc.format(), 404)
        inline = path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".txt")
        return FileResponse(
            path,
            filename=None if inline else path.name,
            media_type="application/octet-stream" if path.suffix == ".safetensors" else None,
        )

    # -- new run ---------------------------------------------------------------------------

    async def new_page(request: Request) -> HTMLResponse:
        choices = forms.backends()
        if not choices:
            return page("New run", "<h1>New run</h1><p class='error'>no backend installed</p>")
        backend = request.query_params.get("backend") or choices[0]["name"]
        info = next((b for b in choices if b["name"] == backend), choices[0])
        backend = info["name"]
        template = request.query_params.get("template")
        if template not in info["templates"]:  # e.g. the previous backend's template
            template = (info["templates"] or [None])[0]
        try:
            values = forms.template_values(backend, template)
        except LorakitError as exc:
            return page("New run", f"<h1>New run</h1><p class='error'>{E(exc.format())}</p>")
        run_name = Path(values.get("output_dir", "./output/my_lora")).name or "my_lora"
        values["output_dir"] = str(runs.runs_dir / run_name)
        picker = "".join(
            f"<option value='{E(b['name'])}'{' selected' if b['name'] == backend else ''}>"
            f"{E(b['name'])} ({E(b['description'])})</option>"
            for b in choices
        )
        templates = "".join(
            f"<option{' selected' if t == template else ''}>{E(t)}</option>"
            for t in info["templates"]
        )
        rows = []
        section = ""
        for field in forms.form_fields(backend):
            head = field.key.split(".")[0] if "." in field.key else "core"
            if head != section:
                section = head
                title = "Core keys" if head == "core" else f"{head}:"
                rows.append(f"<tr class='section'><th colspan='3'>{E(title)}</th></tr>")
            rows.append(_field_row(field, values.get(field.key, "")))
        body = f"""<h1>New run</h1>
<form id="pick" method="get" action="/new" class="pick">
<label>backend <select name="backend" id="backend" onchange="this.form.submit()">{picker}</select></label>
<label>template <select name="template" id="template" onchange="this.form.submit()">{templates}</select></label>
</form>
<form id="config-form" data-backend="{E(backend)}" data-template="{E(str(template))}" onsubmit="return false">
<p class="general"><label>config file <input name="config_path" data-key="config_path" size="60"
 value="{E(str(runs.runs_dir / (run_name + ".yaml")))}"></label>
<span class="err" data-for="config_path"></span></p>
<p class="muted">Empty fields take the default shown. Values are YAML, as in the file.</p>
<table class="fields"><tbody>{"".join(rows)}
<tr class="section"><th colspan="3">other keys (YAML)</th></tr>
<tr><td colspan="2"><textarea name="{forms.EXTRA}" data-key="{forms.EXTRA}" rows="3" cols="60"
 placeholder="key: value"></textarea></td><td><span class="err" data-for="{forms.EXTRA}"></span></td></tr>
</tbody></table>
<p id="form-error" class="error"></p>
<p class="actions"><button id="validate" type="button">Validate</button>
<button id="save" type="button">Save YAML</button>
<button id="start" type="button">Start training</button>
<span id="form-ok" class="ok"></span></p>
<p id="form-plan" class="muted"></p>
<h2>YAML</h2><pre id="yaml"></pre>
</form>"""
        return page("New run", body, "<script>lk.newPage()</script>")

    async def _form(request: Request) -> tuple[dict[str, str], str, Path, str]:
        body = await request.json()
        values = {str(k): v for k, v in (body.get("values") or {}).items()}
        backend = str(body.get("backend") or "")
        path = Path(str(values.pop("config_path", "") or runs.runs_dir / "config.yaml"))
        if not path.is_absolute():
            path = runs.runs_dir / path
        template = body.get("template") or ""
        header = f"# lorakit config, written by lorakit ui from the {backend} template {template}\n"
        return values, backend, path, header

    async def api_validate(request: Request) -> JSONResponse:
        values, backend, path, header = await _form(request)
        return JSONResponse(forms.check(values, backend, path, header, plan=True).as_dict())

    async def api_save(request: Request) -> JSONResponse:
        values, backend, path, header = await _form(request)
        result = forms.save(values, backend, path, header).as_dict()
        result["path"] = str(path)
        return JSONResponse(result)

    async def api_start(request: Request) -> JSONResponse:
        values, backend, path, header = await _form(request)
        checked = forms.check(values, backend, path, header)
        result = checked.as_dict()
        if checked.error is None:
            try:
                runs.name_of(checked.output_dir or "")
            except LorakitError as exc:
                result.update(ok=False, error=exc.format(), key="output_dir")
                return JSONResponse(result)
            forms.save(values, backend, path, header)
            try:
                result["name"] = runs.start(path, checked.output_dir or "")
            except LorakitError as exc:
                result.update(ok=False, error=exc.format(), key=None)
        result["path"] = str(path)
        return JSONResponse(result)

    # -- labels ----------------------------------------------------------------------------

    async def label_page(request: Request) -> HTMLResponse:
        labelers = get_registries().labelers.names()
        options = "".join(f"<option>{E(n)}</option>" for n in labelers)
        folder = request.query_params.get("data_dir", "")
        body = f"""<h1>Label images</h1>
<form id="label-form" onsubmit="return false">
<p><label>image folder <input id="data_dir" size="60" value="{E(folder)}"></label></p>
<p><label>labeler <select id="labeler">{options}</select></label>
<label>prefix (trigger word) <input id="prefix" size="16"></label>
<label>existing metadata.csv <select id="mode"><option value="new">keep (fail)</option>
<option value="append">append new images</option><option value="overwrite">overwrite</option></select></label>
<button id="label" type="button">Label</button> <button id="load" type="button">Show table</button></p>
</form>
<pre id="label-log"></pre><p id="label-error" class="error"></p>
<table id="metadata"><thead></thead><tbody></tbody></table>
<p><button id="save-metadata" type="button" disabled>Save metadata.csv</button>
<span id="metadata-ok" class="ok"></span></p>"""
        return page("Label images", body, "<script>lk.labelPage()</script>")

    async def api_label(request: Request) -> JSONResponse:
        body = await request.json()
        folder = str(body.get("data_dir") or "")
        labeler = str(body.get("labeler") or "")
        command = [sys.executable, "-m", "lorakit.cli", "label", folder, "--labeler", labeler]
        command.append("--no-progress")
        if body.get("prefix"):
            command += ["--prefix", str(body["prefix"])]
        if body.get("mode") in ("append", "overwrite"):
            command.append(f"--{body['mode']}")
        done = await run_in_threadpool(
            subprocess.run, command, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        output = (done.stdout + done.stderr).strip()
        error = None
        if done.returncode != 0:
            lines = [ln for ln in output.splitlines() if ln.startswith("lorakit: error:")]
            error = lines[-1] if lines else output.splitlines()[-1:] or "labeling failed"
        return JSONResponse({"ok": done.returncode == 0, "output": output, "error": error})

    async def api_metadata(request: Request) -> JSONResponse:
        if request.method == "GET":
            folder = Path(request.query_params.get("data_dir", ""))
            try:
                columns, rows = read_metadata(folder / METADATA_NAME)
            except FileNotFoundError:
                return _error(FileNotFoundError(f"{folder / METADATA_NAME}: no such file"), 404)
            except (LorakitError, OSError) as exc:
                return _error(exc)
            return JSONResponse({"columns": columns, "rows": rows, "data_dir": str(folder)})
        body = await request.json()
        folder = Path(str(body.get("data_dir") or ""))
        columns = [str(c) for c in body.get("columns") or []]
        rows = [{str(k): str(v) for k, v in r.items()} for r in body.get("rows") or []]
        if "file_name" not in columns:
            return _error(ValueError("metadata.csv needs a file_name column"))
        known = set(find_images(folder))
        missing = [r["file_name"] for r in rows if r.get("file_name") not in known]
        if missing:
            return _error(ValueError(f"{folder}: no image named {missing[0]}"))
        write_text(folder / METADATA_NAME, format_metadata(columns, rows))
        return JSONResponse({"ok": True, "path": str(folder / METADATA_NAME)})

    async def api_image(request: Request) -> Response:
        folder = Path(request.query_params.get("data_dir", ""))
        name = request.query_params.get("name", "")
        if name not in set(find_images(folder)):
            return Response("not found", 404)
        return FileResponse(folder / name)

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/new", new_page),
        Route("/label", label_page),
        Route("/runs/{name:path}/files/{rel:path}", run_file),
        Route("/runs/{name:path}", run_page),
        Route("/api/runs", api_runs),
        Route("/api/runs/{name:path}/stop", api_stop, methods=["POST"]),
        Route("/api/runs/{name:path}/resume", api_resume, methods=["POST"]),
        Route("/api/runs/{name:path}", api_run),
        Route("/api/validate", api_validate, methods=["POST"]),
        Route("/api/save", api_save, methods=["POST"]),
        Route("/api/start", api_start, methods=["POST"]),
        Route("/api/label", api_label, methods=["POST"]),
        Route("/api/metadata", api_metadata, methods=["GET", "POST"]),
        Route("/api/image", api_image),
    ]
    middleware = [Middleware(TokenMiddleware, token=token)] if token else []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        runs.shutdown()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.runs = runs
    return app


def _field_row(field: forms.Field, value: str) -> str:
    key = E(field.key)
    required = " <b class='req' title='required'>*</b>" if field.required else ""
    if field.kind == "select":
        default = f"(default: {field.default})" if field.default else ""
        options = [f"<option value=''>{E(default)}</option>"]
        options += [
            f"<option{' selected' if c == value else ''}>{E(c)}</option>" for c in field.choices
        ]
        control = f"<select id='{key}' name='{key}' data-key='{key}'>{''.join(options)}</select>"
    else:
        control = (
            f"<input id='{key}' name='{key}' data-key='{key}' value='{E(value)}' size='40'"
            f" placeholder='{E(field.default)}'>"
        )
    return (
        f"<tr><td><label for='{key}'><code>{key}</code></label>{required}"
        f"<div class='muted'>{E(field.type_name)}</div></td>"
        f"<td>{control}<div class='help'>{E(field.description)}</div></td>"
        f"<td><span class='err' data-for='{key}'></span></td></tr>"
    )


def serve(
    runs_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    token: str | None = None,
    parallel: bool = False,
) -> None:
    """Run the page with uvicorn until Ctrl-C (trainings it started stop with a checkpoint)."""
    import uvicorn

    app = create_app(runs_dir, token=token, parallel=parallel)
    shown = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    url = f"http://{shown}:{port}/" + (f"?token={quote(token)}" if token else "")
    print(f"lorakit ui: {url} (runs in {Path(runs_dir).resolve()}); Ctrl-C to quit", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
