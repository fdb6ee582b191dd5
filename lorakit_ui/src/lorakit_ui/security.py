"""What keeps the page safe to leave open while browsing: ASGI middleware on every route.

- ``Host`` must name this server (loopback names, the bound address, ``--allow-host``
  names): a DNS-rebinding page never reaches a route.
- A per-server token, as Jupyter does: the printed URL's ``?token=`` sets an HttpOnly,
  SameSite=Strict cookie; every request, downloads and streams included, needs it.
- A request that changes state (any method but GET/HEAD) must come from the page itself:
  its ``Origin`` (or, without one, its ``Referer``) is this server's own origin, and its body
  is ``application/json``, which no cross-site form or ``no-cors`` fetch can send.
- Bodies are bounded (413 past the route's limit, before the body is read).
- Every answer carries a CSP without inline script and ``frame-ancestors 'none'``,
  ``X-Frame-Options: DENY`` and ``X-Content-Type-Options: nosniff`` -- errors included: a
  route that fails is answered here (500, one JSON line) rather than by the server.
- The token cookie is found by name among the others: another site's cookie on the same
  host (``prefs={"a":"b"}`` on localhost) neither hides it nor locks the user out.

Refusals are one-line JSON errors, and one line on the server's stderr.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

#: Cookie name prefix; the port is appended (cookies are shared by every port of a host).
COOKIE = "lorakit_ui_token"
SAFE_METHODS = ("GET", "HEAD")
#: Body limit of every route, and of the routes that need more.
DEFAULT_LIMIT = 1_000_000
LIMITS = {"/api/metadata": 16_000_000}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> list[str]:
    """The ``Host`` names this server answers to (without port; IPv6 without brackets)."""
    names = [*LOOPBACK_NAMES, bound.strip("[]"), *(h.strip().strip("[]") for h in extra)]
    return sorted({n.lower() for n in names if n})


def host_ok(host_header: str, allowed: list[str], wildcard: bool) -> bool:
    """``Host: name[:port]`` is one of ``allowed`` (bound to 0.0.0.0/::, any IP literal too:
    DNS rebinding needs a name)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in allowed:
        return True
    if wildcard:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


def local_path(path: str) -> str:
    """``path`` when it names a page of this server, else ``/`` (no ``//host`` redirects)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class Guard:
    """The checks above, as one pure-ASGI middleware (it must see the body stream)."""

    def __init__(
        self, app: Any, *, token: str, port: int, hosts: list[str], wildcard: bool = False
    ) -> None:
        self.app = app
        self.token = token
        self.cookie = f"{COOKIE}_{port}"
        self.hosts = hosts
        self.wildcard = wildcard

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *HEADERS]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            status, text = refusal
            method, path = scope["method"], scope["path"]
            print(f"lorakit ui: refused {method} {path}: {text}", file=sys.stderr, flush=True)
            await _json(status, text)(scope, receive, send_with_headers)
            return
        login = self.login(scope)
        if login is not None:
            await login(scope, receive, send_with_headers)
            return
        limit = LIMITS.get(scope["path"], DEFAULT_LIMIT)
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            await self.app(scope, _bounded(receive, limit), tracked)
        except Exception as exc:
            if started:
                raise
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"lorakit ui: {scope['method']} failed: {text}", file=sys.stderr, flush=True)
            await _json(500, "the server could not answer this request")(
                scope, receive, send_with_headers
            )

    def refusal(self, scope: Any) -> tuple[int, str] | None:
        """(status, reason) when the request is refused."""
        headers = Headers(scope=scope)
        if not host_ok(headers.get("host", ""), self.hosts, self.wildcard):
            return 403, f"Host {headers.get('host', '')!r} is not this server (see --allow-host)"
        given = _query_token(scope)
        if given is not None:
            return None if _same(given, self.token) else (403, "wrong token")
        if not any(_same(value, self.token) for value in _cookies(headers, self.cookie)):
            return 403, "a token is needed: open the URL lorakit ui printed"
        if scope["method"] in SAFE_METHODS:
            return None
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        origin = headers.get("origin")
        if origin is None and headers.get("referer"):
            origin = _origin_of(headers["referer"])
        if origin != own:
            return 403, f"cross-origin request refused (origin {origin or 'missing'})"
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return 415, "the body must be application/json"
        length = headers.get("content-length")
        limit = LIMITS.get(scope["path"], DEFAULT_LIMIT)
        if length is not None and length.isdigit() and int(length) > limit:
            return 413, f"request body over {limit} bytes"
        return None

    def login(self, scope: Any) -> Any:
        """``?token=`` (already checked): set the cookie, send the browser on without it."""
        if _query_token(scope) is None:
            return None
        from starlette.responses import RedirectResponse

        response = RedirectResponse(local_path(scope["path"]), status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response


def _query_token(scope: Any) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[-1] if values else None


def _cookies(headers: Headers, name: str) -> list[str]:
    """The values of cookie ``name``, whatever the other cookies hold: each ``name=value``
    pair of every Cookie header is taken on its own (RFC 6265 5.4)."""
    found = []
    for header in headers.getlist("cookie"):
        for pair in header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                found.append(value.strip().strip('"'))
    return found


def _same(given: str, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _json(status: int, text: str) -> Any:
    from starlette.responses import Response

    body = json.dumps({"ok": False, "error": text})
    return Response(body, status_code=status, media_type="application/json")


class BodyTooLarge(Exception):
    """A body without (or with a false) Content-Length that grew past its limit."""


def _bounded(receive: Any, limit: int) -> Any:
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body over {limit} bytes")
        return message

    return wrapped
