"""``POST /api/plan``: the form's plan for a card, as ``lorakit plan --json`` gives it.

The form is checked first (in a thread: the same check as Validate); an invalid form is
answered with its error and the key it belongs to, and no plan. A valid one is planned by
the :class:`~lorakit_ui.planner.PlanWorker` (a process, bounded in time)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from lorakit.api import LorakitError
from lorakit.app import parse_gpu
from lorakit_ui.api_config import Form
from lorakit_ui.errors import BadBody, error, json_body
from lorakit_ui.planner import LOCAL

#: The card sizes the form offers (GB, as cards are sold).
SIZES = (8, 12, 16, 24, 48, 80)


def card_of(value: str) -> str:
    """The ``gpu`` text for the worker: ``local``, empty, or a size/name ``parse_gpu`` reads
    (a plain number is GB); a value it cannot read raises ``UsageError``."""
    value = value.strip()
    if value in ("", LOCAL):
        return value
    gpu = f"{value}GB" if value.replace(".", "", 1).isdigit() else value
    parse_gpu(gpu)
    return gpu


async def api_plan(request: Request) -> JSONResponse:
    try:
        body = await json_body(request)
        form = Form(request.app.state.runs, body)
        gpu = card_of(str(body.get("gpu") or ""))
    except BadBody as exc:
        return error(exc)
    except LorakitError as exc:
        return JSONResponse({"ok": False, "error": exc.format(), "key": "gpu"})
    checked = await run_in_threadpool(form.check)
    if checked.error is not None:
        return JSONResponse({"ok": False, "error": checked.error, "key": checked.key})
    answer = await run_in_threadpool(request.app.state.planner.plan, checked.text, form.path, gpu)
    return JSONResponse({**answer, "gpu": gpu})
