"""Trying a run's result on its page: a chat panel (text runs: the adapter on and off side by
side) or a sample panel (image runs: prompt, LoRA weight, seed, steps).

``GET /api/try/RUN`` says which panel a run gets and what it can be tried from (the finished
run, its checkpoints); ``POST /api/try/RUN/chat`` and ``/sample`` queue a request for the
model worker (:mod:`lorakit_ui.tryout`) and answer its number at once;
``GET /api/try-jobs/N`` is where it stands, ``/api/try-jobs/N/image`` the rendered image.
Every value is checked and bounded here, before anything is queued.
"""

from __future__ import annotations

import math
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lorakit.api import LorakitError, RunFolder, UsageError, get_registries
from lorakit_ui.errors import BadBody, error, json_body
from lorakit_ui.files import handle_response
from lorakit_ui.runs import RunManager, _yaml
from lorakit_ui.tryout import Busy

#: Bounds of what a request may ask.
MAX_PROMPT = 2000
MAX_TURNS = 64
MAX_CONVERSATION = 64_000
MAX_NEW_TOKENS = 512
MAX_STEPS = 200
MAX_WEIGHT = 4.0
MAX_SEED = 2**32 - 1
STEP = re.compile(r"^step-\d{1,12}$")


def checkpoints(run: RunFolder) -> list[str]:
    """The run's checkpoint folders (``step-N``), newest first."""
    names = [
        n
        for n in run.entries(RunFolder.CHECKPOINTS)
        if STEP.match(n) and run.is_dir(f"{RunFolder.CHECKPOINTS}/{n}")
    ]
    return sorted(names, key=lambda n: int(n.split("-")[1]), reverse=True)


def panel(runs: RunManager, name: str) -> dict[str, Any]:
    """Which panel run ``name`` gets (``chat``, ``sample`` or None and why), and its sources."""
    out = runs.path_of(name)
    run = RunFolder(out)
    record = run.try_json(RunFolder.RECORD) or {}
    backend = record.get("backend")
    info: dict[str, Any] = {"kind": None, "reason": None, "final": False, "checkpoints": []}
    if not isinstance(backend, str):
        return {**info, "reason": "its run record does not name the backend that trained it"}
    try:
        spec = get_registries().backends.get(backend)
    except LorakitError as exc:
        return {**info, "reason": exc.format()}
    kind = "chat" if spec.supports("chat") else "sample" if spec.supports("sample") else None
    if kind is None:
        return {**info, "reason": f"backend {backend} neither chats nor samples"}
    prompts = _yaml(out, RunFolder.CONFIG).get("sample_prompts") or []
    if isinstance(prompts, str):
        prompts = [prompts]
    return {
        **info,
        "kind": kind,
        "final": record.get("status") == "finished",
        "checkpoints": checkpoints(run),
        "prompts": [str(p)[:MAX_PROMPT] for p in prompts][:16] if isinstance(prompts, list) else [],
    }


async def api_try(request: Request) -> JSONResponse:
    runs = request.app.state.runs
    try:
        info = await run_in_threadpool(panel, runs, request.path_params["name"])
    except LorakitError as exc:
        return error(exc, 404)
    return JSONResponse(info)


# -- checking a request ---------------------------------------------------------------------


def _number(
    body: dict[str, Any], key: str, low: float, high: float, default: Any, kind: type
) -> Any:
    """``body[key]`` as a ``kind`` (int or float) from ``low`` to ``high``; absent: ``default``."""
    value = body.get(key, default)
    if value is None or value == "":
        return default
    bounds = f"{key}: a number from {low:g} to {high:.0f}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadBody(bounds)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise BadBody(f"{bounds} (got {str(value)[:40]!r})")
    return number


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadBody("prompt: type something to send")
    if len(prompt) > MAX_PROMPT:
        raise BadBody(f"prompt: at most {MAX_PROMPT} characters (got {len(prompt)})")
    return prompt


def _turns(body: dict[str, Any], key: str) -> list[dict[str, str]]:
    turns = body.get(key) or []
    if not isinstance(turns, list) or len(turns) > MAX_TURNS:
        raise BadBody(f"{key}: a list of at most {MAX_TURNS} turns (press Reset to start over)")
    out = []
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ("user", "assistant")
            or not isinstance(turn.get("content"), str)
        ):
            raise BadBody(f"{key}: each turn is {{role: user|assistant, content: text}}")
        out.append({"role": turn["role"], "content": turn["content"]})
    if sum(len(t["content"]) for t in out) > MAX_CONVERSATION:
        raise BadBody(
            f"{key}: the conversation is over {MAX_CONVERSATION} characters (press Reset)"
        )
    return out


def _source(runs: RunManager, name: str, body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The run's folder and the folder to take the LoRA from; refusals as one line."""
    info = panel(runs, name)
    if info["kind"] != kind:
        raise UsageError(
            f"run {name} has no {kind} panel: {info['reason'] or info['kind'] + ' only'}"
        )
    checkpoint = str(body.get("checkpoint") or "")
    if checkpoint:
        if checkpoint not in info["checkpoints"]:
            raise UsageError(f"run {name} has no checkpoint {checkpoint[:40]!r}")
        folder = f"{RunFolder.CHECKPOINTS}/{checkpoint}"
    elif info["final"]:
        folder = ""
    else:
        raise UsageError(f"run {name} has not finished: try one of its checkpoints")
    return {"kind": kind, "run": str(runs.path_of(name)), "folder": folder}


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": _prompt(body),
        "on": _turns(body, "on"),
        "off": _turns(body, "off"),
        "max_new_tokens": _number(body, "max_new_tokens", 1, MAX_NEW_TOKENS, 128, int),
    }


def sample_request(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": _prompt(body),
        "weight": _number(body, "weight", -MAX_WEIGHT, MAX_WEIGHT, 1.0, float),
        "seed": _number(body, "seed", 0, MAX_SEED, 42, int),
        "steps": _number(body, "steps", 1, MAX_STEPS, None, int),
    }


async def _queue(request: Request, kind: str) -> JSONResponse:
    runs = request.app.state.runs
    name = request.path_params["name"]
    try:
        body = await json_body(request)
        asked = chat_request(body) if kind == "chat" else sample_request(body)
        source = await run_in_threadpool(_source, runs, name, body, kind)
        job = request.app.state.tryout.submit(name, {**source, **asked})
    except BadBody as exc:
        return error(exc)
    except Busy as exc:
        return error(exc, 429)
    except LorakitError as exc:
        return error(exc, 409)
    return JSONResponse({"ok": True, **request.app.state.tryout.status(job.id)})


async def api_chat(request: Request) -> JSONResponse:
    return await _queue(request, "chat")


async def api_sample(request: Request) -> JSONResponse:
    return await _queue(request, "sample")


def _job_id(request: Request) -> int:
    text = request.path_params["job"]
    return int(text) if text.isdigit() and len(text) < 12 else 0


async def api_job(request: Request) -> JSONResponse:
    status = request.app.state.tryout.status(_job_id(request))
    if status is None:
        return error("no such request (the page remembers the newest ones only)", 404)
    return JSONResponse(status)


async def api_job_image(request: Request) -> Response:
    handle = await run_in_threadpool(request.app.state.tryout.image, _job_id(request))
    if handle is None:
        return Response("not found", 404, media_type="text/plain")
    return handle_response(handle, "sample.png", inline=True, media_type="image/png")


ROUTES = [
    Route("/api/try/{name:path}/chat", api_chat, methods=["POST"]),
    Route("/api/try/{name:path}/sample", api_sample, methods=["POST"]),
    Route("/api/try/{name:path}", api_try),
    Route("/api/try-jobs/{job}/image", api_job_image),
    Route("/api/try-jobs/{job}", api_job),
]
