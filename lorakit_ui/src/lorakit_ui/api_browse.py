"""``GET /api/browse?path=``: the file browser of the form's path fields.

It shows only the person's folders: their home, the runs folder's parent, and each
``--folder`` given to ``lorakit ui`` (as real paths). A path is listed only when it lies in
one of them and no part of it is a link (links are listed as links, never opened: a link
can lead anywhere); hidden entries are left out; a listing stops at :data:`MAX_ENTRIES`.
Names travel as JSON and the page sets them as text, never as markup.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from lorakit.api import IMAGE_EXTENSIONS
from lorakit_ui.errors import error

#: Entries one listing shows at most.
MAX_ENTRIES = 1000
#: Longest path the browser looks up.
MAX_PATH = 4096


def roots_of(runs_dir: Path, folders: tuple[str | Path, ...] = ()) -> list[Path]:
    """The folders the browser shows: home, the runs folder's parent, ``--folder``s."""
    found: list[Path] = []
    for folder in (Path.home(), Path(runs_dir).parent, *map(Path, folders)):
        real = Path(os.path.realpath(os.path.expanduser(folder)))
        if real.is_dir() and real not in found:
            found.append(real)
    return found


def _kind(entry: os.DirEntry[str]) -> str | None:
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "image" if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS else "file"
    return None  # FIFOs, sockets, devices: never offered


def listing(roots: list[Path], text: str) -> tuple[int, dict[str, Any]]:
    """(status, answer) for ``GET /api/browse?path=text``."""
    if not text:
        return 200, {"ok": True, "path": None, "parent": None, "roots": list(map(str, roots))}
    if len(text) > MAX_PATH or "\x00" in text:
        return 400, {"ok": False, "error": "not a path"}
    path = Path(os.path.abspath(os.path.expanduser(text)))
    root = next((r for r in roots if path == r or r in path.parents), None)
    if root is None:
        shown = ", ".join(map(str, roots))
        return 403, {"ok": False, "error": f"{path}: outside the folders this page shows ({shown})"}
    if os.path.realpath(path) != str(path):
        return 403, {"ok": False, "error": f"{path}: a link (the browser does not follow links)"}
    if not path.is_dir():
        return 404, {"ok": False, "error": f"{path}: not a folder"}
    entries: list[dict[str, Any]] = []
    truncated = False
    try:
        with os.scandir(path) as scan:
            for entry in scan:
                if entry.name.startswith("."):
                    continue
                if len(entries) >= MAX_ENTRIES:
                    truncated = True
                    break
                try:
                    kind = _kind(entry)
                except OSError:
                    continue
                if kind is not None:
                    entries.append({"name": entry.name, "kind": kind})
    except OSError as exc:
        return 403, {"ok": False, "error": f"{path}: cannot list ({exc.strerror})"}
    entries.sort(key=lambda e: (e["kind"] != "dir", e["name"].lower()))
    parent = str(path.parent) if path != root else None
    return 200, {
        "ok": True,
        "path": str(path),
        "parent": parent,
        "entries": entries,
        "truncated": truncated,
        "roots": list(map(str, roots)),
    }


async def api_browse(request: Request) -> JSONResponse:
    roots = request.app.state.roots
    status, answer = await run_in_threadpool(listing, roots, request.query_params.get("path", ""))
    if not answer.get("ok"):
        return error(answer["error"], status)
    return JSONResponse(answer)
