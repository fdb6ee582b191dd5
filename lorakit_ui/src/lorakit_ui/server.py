"""The web app: the routes of each concern's module, behind the security middleware.

Pages: ``/`` the runs, ``/new`` a new run from a template, ``/runs/NAME`` one run (live
chart, samples, log, downloads, the panel to try it), ``/label`` labeling a folder and
editing its metadata.csv, ``/compare`` runs side by side.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lorakit_ui import (
    api_browse,
    api_compare,
    api_config,
    api_dataset,
    api_labels,
    api_plan,
    api_runs,
    api_try,
    pages,
)
from lorakit_ui.planner import PlanWorker
from lorakit_ui.runs import RunManager
from lorakit_ui.security import BodyTooLarge, Guard, allowed_hosts
from lorakit_ui.tryout import TryQueue

ROUTES = [
    Route("/", pages.index),
    Route("/static/{name}", pages.static),
    Route("/new", pages.new_page),
    Route("/label", pages.label_page),
    Route("/runs/{name:path}/files/{rel:path}", api_runs.run_file),
    Route("/runs/{name:path}/zip/{rel:path}", api_runs.run_zip),
    Route("/runs/{name:path}", pages.run_page),
    Route("/api/runs", api_runs.api_runs),
    Route("/api/runs/{name:path}/stop", api_runs.api_stop, methods=["POST"]),
    Route("/api/runs/{name:path}/resume", api_runs.api_resume, methods=["POST"]),
    Route("/api/runs/{name:path}", api_runs.api_run),
    Route("/api/validate", api_config.api_validate, methods=["POST"]),
    Route("/api/save", api_config.api_save, methods=["POST"]),
    Route("/api/start", api_config.api_start, methods=["POST"]),
    Route("/api/label", api_labels.api_label, methods=["POST"]),
    Route("/api/labelers", api_labels.api_labelers),
    Route("/api/metadata", api_labels.api_metadata, methods=["GET", "POST"]),
    Route("/api/image", api_labels.api_image),
    *api_try.ROUTES,
    *api_compare.ROUTES,
    Route("/api/plan", api_plan.api_plan, methods=["POST"]),
    Route("/api/dataset", api_dataset.api_dataset, methods=["POST"]),
    Route("/api/browse", api_browse.api_browse),
]


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"ok": False, "error": str(exc)}, status_code=413)


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def create_app(
    runs_dir: str | Path,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    allow_hosts: tuple[str, ...] = (),
    parallel: bool = False,
    folders: tuple[str | Path, ...] = (),
) -> Starlette:
    """The app for one runs folder; every request needs ``token`` (cookie or ``?token=``).
    ``folders``: what the file browser shows besides home and the runs folder's parent."""
    runs = RunManager(runs_dir, parallel=parallel)
    planner = PlanWorker()
    runs.runs_dir.mkdir(parents=True, exist_ok=True)
    tryout = TryQueue()
    runs.before_start = tryout.release  # a training gets the memory a loaded model held
    guard = Middleware(
        Guard,
        token=token,
        port=port,
        hosts=allowed_hosts(host, allow_hosts),
        wildcard=is_wildcard(host),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        tryout.shutdown()
        runs.shutdown()
        planner.shutdown()

    app = Starlette(
        routes=ROUTES,
        middleware=[guard],
        lifespan=lifespan,
        exception_handlers={BodyTooLarge: _too_large},
    )
    app.state.runs = runs
    app.state.tryout = tryout
    app.state.planner = planner
    app.state.roots = api_browse.roots_of(runs.runs_dir, folders)
    return app


def browsable(host: str) -> str:
    """The address to print: a wildcard bind is browsed as localhost, IPv6 in brackets."""
    if host in ("127.0.0.1", "::1", "localhost") or is_wildcard(host):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def serve(
    runs_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    allow_hosts: tuple[str, ...] = (),
    parallel: bool = False,
    folders: tuple[str | Path, ...] = (),
) -> None:
    """Run the page with uvicorn until Ctrl-C (trainings it started stop with a checkpoint)."""
    import uvicorn

    token = secrets.token_urlsafe(24)
    app = create_app(
        runs_dir,
        token=token,
        host=host,
        port=port,
        allow_hosts=allow_hosts,
        parallel=parallel,
        folders=folders,
    )
    url = f"http://{browsable(host)}:{port}/?token={quote(token)}"
    print(f"lorakit ui: {url} (runs in {Path(runs_dir).resolve()}); Ctrl-C to quit", flush=True)
    from lorakit_ui.connections import uvicorn_options

    uvicorn.run(app, host=host, port=port, log_level="warning", **uvicorn_options())
