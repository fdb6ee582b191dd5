"""One-line JSON errors, and reading a JSON body that the security middleware let through."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from lorakit.api import LorakitError


def error(exc: Exception | str, status: int = 400, **more: Any) -> JSONResponse:
    message = exc.format() if isinstance(exc, LorakitError) else str(exc)
    return JSONResponse({"ok": False, "error": message, **more}, status_code=status)


class BadBody(Exception):
    """A body that is not a JSON object."""


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadBody("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadBody("the body must be a JSON object")
    return body
