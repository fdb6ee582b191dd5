"""Comparing runs: ``/compare?run=A&run=B`` overlays their loss and eval-loss curves (by step
or by wall time), lists the config keys whose values differ, and shows each image run's
samples as a grid (step × prompt). ``GET /api/compare?run=...`` gives the data.

Every file is read through ``RunFolder`` (no links, bounded); values go to the page as JSON
and are put in as text, never as markup.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lorakit.api import LorakitError, RunFolder
from lorakit_ui.errors import error
from lorakit_ui.pages import render
from lorakit_ui.runs import IMAGE_SUFFIXES, RunManager, _yaml, read_metrics

#: Runs compared at once, points per curve, steps per sample grid, characters per value.
MAX_RUNS = 8
MAX_POINTS = 2000
MAX_GRID_STEPS = 40
MAX_VALUE = 300
#: Keys that differ between any two runs and say nothing about them.
UNCOMPARED = ("output_dir",)
SAMPLE = re.compile(r"^step-(\d{1,12})-(\d{1,4})\.([a-z]+)$")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def curves(rows: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``loss`` and ``eval_loss`` as ``[step, elapsed_s, value]`` points (at most
    ``MAX_POINTS`` each, evenly thinned, the last kept)."""
    out: dict[str, list[list[float]]] = {"loss": [], "eval_loss": []}
    for row in rows:
        step, elapsed = _number(row.get("step")), _number(row.get("elapsed_s"))
        if step is None:
            continue
        for key, points in out.items():
            value = _number(row.get(key))
            if value is not None:
                points.append([step, elapsed if elapsed is not None else step, value])
    for key, points in out.items():
        if len(points) > MAX_POINTS:
            stride = math.ceil(len(points) / MAX_POINTS)
            out[key] = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"sd.resolution": 512, ...}`` (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def config_differences(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The keys whose values are not the same in every config, with each run's value as
    text (``null`` for a key a run's config lacks)."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - set(UNCOMPARED))
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            shown = [None if v is missing else _shown(v) for v in values]
            rows.append({"key": key, "values": shown})
    return rows


def sample_grid(runs: RunManager, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The run's sample images by step × prompt (``samples/step-N-PP.png``), newest
    ``MAX_GRID_STEPS`` steps; regular files only."""
    run = RunFolder(runs.path_of(name))
    cells: dict[int, dict[int, str]] = {}
    for rel in run.files(RunFolder.SAMPLES):
        found = SAMPLE.match(rel.rsplit("/", 1)[-1])
        if found and f".{found.group(3)}" in IMAGE_SUFFIXES and rel.count("/") == 1:
            cells.setdefault(int(found.group(1)), {})[int(found.group(2))] = rel
    steps = sorted(cells)[-MAX_GRID_STEPS:]
    prompts = config.get("sample_prompts") or []
    if isinstance(prompts, str):
        prompts = [prompts]
    width = 1 + max((i for s in steps for i in cells[s]), default=-1)
    texts = [str(p)[:MAX_VALUE] for p in prompts][:width] if isinstance(prompts, list) else []
    return {
        "steps": steps,
        "prompts": texts + [""] * (width - len(texts)),
        "cells": [[cells[s].get(i) for i in range(width)] for s in steps],
    }


def compare(runs: RunManager, names: list[str]) -> dict[str, Any]:
    shown, configs = [], []
    for name in names:
        out = runs.path_of(name)
        if not RunFolder(out).is_file(RunFolder.RECORD):
            raise LorakitError(f"no run named {name}")
        config = _yaml(out, RunFolder.CONFIG)
        configs.append(config)
        summary = runs.summary(name)
        shown.append(
            {
                "name": name,
                "status": summary["status"],
                "steps": summary["steps"],
                "curves": curves(read_metrics(out)),
                "samples": sample_grid(runs, name, config),
            }
        )
    return {"runs": shown, "config": config_differences(configs)}


def _names(request: Request) -> list[str]:
    names = list(dict.fromkeys(request.query_params.getlist("run")))
    if not 1 <= len(names) <= MAX_RUNS:
        raise LorakitError(f"compare 1 to {MAX_RUNS} runs (got {len(names)})")
    return names


async def api_compare(request: Request) -> JSONResponse:
    try:
        names = _names(request)
        data = await run_in_threadpool(compare, request.app.state.runs, names)
    except LorakitError as exc:
        return error(exc, 404)
    return JSONResponse(data)


async def compare_page(request: Request) -> Response:
    return render(request, "compare.html", "Compare runs", "compare", {})


ROUTES = [
    Route("/compare", compare_page),
    Route("/api/compare", api_compare),
]
