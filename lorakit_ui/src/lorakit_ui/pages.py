"""The HTML pages: Jinja2 templates with autoescape; data goes in as attributes, and the
page's script (``static/app.js``, no inline script) asks the JSON API for the rest."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from lorakit.api import LorakitError, get_registries
from lorakit_ui import forms, picker
from lorakit_ui.api_plan import SIZES

#: Keys shown first on the form; the rest are folded under "advanced".
BASIC = (
    "base_model",
    "train_data_dir",
    "output_dir",
    "lora_rank",
    "batch_size",
    "epochs",
    "max_steps",
    "learning_rate",
    "sd.resolution",
    "llm.max_seq_len",
)
#: Keys whose field gets a file browser.
PATHS = ("base_model", "train_data_dir", "output_dir", "metadata_path", "sd.metadata_path")
STATIC_TYPES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "new.js": "text/javascript",
    "dataset.js": "text/javascript",
    "try.js": "text/javascript",
    "compare.js": "text/javascript",
}


def _templates() -> Jinja2Templates:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lorakit_ui", "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped, attributes included
    )
    return Jinja2Templates(env=env)


TEMPLATES = _templates()


def render(request: Request, file: str, title: str, page: str, context: dict[str, Any]) -> Response:
    return TEMPLATES.TemplateResponse(
        request, file, {"title": title, "page": page, **context}, media_type="text/html"
    )


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return Response("not found", 404)
    text = resources.files("lorakit_ui").joinpath(f"static/{name}").read_text(encoding="utf-8")
    return Response(text, media_type=STATIC_TYPES[name])


async def index(request: Request) -> Response:
    runs = request.app.state.runs
    return render(request, "runs.html", "Runs", "runs", {"runs_dir": str(runs.runs_dir)})


async def run_page(request: Request) -> Response:
    runs = request.app.state.runs
    name = request.path_params["name"]
    try:
        if not runs.path_of(name).is_dir() and name not in runs.jobs:
            return Response(f"no run named {name}", 404, media_type="text/plain")
    except LorakitError as exc:
        return Response(exc.format(), 404, media_type="text/plain")
    return render(request, "run.html", name, "run", {"name": name})


async def label_page(request: Request) -> Response:
    labelers = list(get_registries().labelers.names())
    folder = request.query_params.get("data_dir", "")
    return render(
        request, "label.html", "Label images", "label", {"labelers": labelers, "folder": folder}
    )


def _sections(fields: list[forms.Field]) -> list[tuple[str, list[forms.Field]]]:
    out: list[tuple[str, list[forms.Field]]] = []
    for field in fields:
        head = field.key.split(".")[0] if "." in field.key else "core"
        title = "Core keys" if head == "core" else f"{head}:"
        if not out or out[-1][0] != title:
            out.append((title, []))
        out[-1][1].append(field)
    return out


def new_context(runs: Any, backend: str | None, template: str | None) -> dict[str, Any]:
    """What the new-run form shows (off the event loop: it reads templates and schemas)."""
    choices = forms.backends()
    if not choices:
        return {"error": "no backend installed"}
    backend = backend or runs.last_backend() or "sd"
    info = next((b for b in choices if b["name"] == backend), choices[0])
    if template not in info["templates"]:  # e.g. the previous backend's template
        template = (info["templates"] or [None])[0]
    try:
        values = forms.template_values(info["name"], template)
    except LorakitError as exc:
        return {"error": exc.format()}
    wanted = Path(values.get("output_dir", "./output/my_lora")).name or "my_lora"
    out = runs.free_run_dir(wanted)
    values["output_dir"] = str(out)
    fields = forms.form_fields(info["name"])
    basic = [f for f in fields if f.key in BASIC or f.required]
    advanced = [f for f in fields if f not in basic]
    return {
        "choices": choices,
        "backend": info["name"],
        "template": str(template),
        "templates": info["templates"],
        "values": values,
        "config_path": str(forms.default_config_path(out)),
        "basic": _sections(basic),
        "advanced": _sections(advanced),
        "extra": forms.EXTRA,
        "picker": picker.grouped(),
        "paths": PATHS,
        "sizes": SIZES,
    }


async def new_page(request: Request) -> Response:
    runs = request.app.state.runs
    query = request.query_params
    context = await run_in_threadpool(
        new_context, runs, query.get("backend"), query.get("template")
    )
    return render(request, "new.html", "New run", "new", context)
