"""Every route of the app refuses what a foreign web page can send: enumerated from the app,
so a new route cannot skip the checks."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient
from ui_helpers import ORIGIN, TOKEN, Server

PARAMS = {"name": "x", "rel": "y", "job": "1"}
COOKIE = "lorakit_ui_token_7860"
NEEDED = {
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
}


def every_route(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        assert isinstance(route, Route), route
        path = route.path
        for key, value in PARAMS.items():
            path = path.replace(f"{{{key}:path}}", value).replace(f"{{{key}}}", value)
        path = path.replace("{name}", "app.js")
        assert "{" not in path, path
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                found.append((method, path))
    return found


@pytest.fixture
def app(runs_dir):
    from lorakit_ui.server import create_app

    return create_app(runs_dir, token=TOKEN, port=7860)


def send(app, method, path, *, host="127.0.0.1:7860", cookie=TOKEN, query="", **headers):
    client = TestClient(app, base_url=f"http://{host}")
    if cookie is not None:
        client.cookies.set(COOKIE, cookie)
    body = {} if method == "POST" else None
    sent = {"content-type": "application/json"} if method == "POST" else {}
    sent.update(headers)
    return client.request(
        method, path + query, content=None if body is None else b"{}", headers=sent
    )


def test_every_route_checks_host_token_origin_and_content_type(app, runs_dir, capfd):
    routes = every_route(app)
    assert len(routes) >= 20
    assert {("POST", "/api/plan"), ("POST", "/api/dataset"), ("GET", "/api/browse")} <= set(routes)
    assert {("GET", "/api/labelers"), ("POST", "/api/label")} <= set(routes)
    for method, path in routes:
        where = f"{method} {path}"
        answers = {
            "foreign host": send(app, method, path, host="evil.example:7860", origin=ORIGIN),
            "no token": send(app, method, path, cookie=None, origin=ORIGIN),
            "wrong token": send(app, method, path, cookie="wrong", origin=ORIGIN),
            "wrong token in URL": send(app, method, path, cookie=None, query="?token=no"),
        }
        if method == "POST":
            answers["foreign origin"] = send(app, method, path, origin="http://127.0.0.1:9999")
            answers["no origin"] = send(app, method, path)
            answers["foreign referer"] = send(app, method, path, referer="http://evil.example/")
            text = send(app, method, path, origin=ORIGIN, **{"content-type": "text/plain"})
            assert text.status_code == 415, where
        for case, answer in answers.items():
            assert answer.status_code == 403, (where, case, answer.status_code)
            assert answer.json()["ok"] is False and "\n" not in answer.json()["error"]
            assert set(answer.headers) >= NEEDED, (where, case)
        good = send(app, method, path, origin=ORIGIN)
        assert good.status_code not in (403, 415), (where, good.text)
        assert set(good.headers) >= NEEDED, where
        assert "frame-ancestors 'none'" in good.headers["content-security-policy"]
        assert "unsafe-inline" not in good.headers["content-security-policy"]
        assert good.headers["x-frame-options"] == "DENY"
        if method == "POST":  # the page's own fetch without Origin still has its Referer
            own = send(app, method, path, referer=ORIGIN + "/new")
            assert own.status_code not in (403, 415), where
    assert "refused POST /api/save: cross-origin request refused" in capfd.readouterr().err


def test_the_attacks_of_the_report_change_nothing(app, runs_dir, tmp_path):
    target = tmp_path / "bashrc"
    values = {"config_path": str(target), "sample_prompts": "[$(touch /tmp/pwned)]"}
    body = b'{"backend": "sd", "values": %s}' % str(values).replace("'", '"').encode()
    client = TestClient(app, base_url=ORIGIN)
    client.cookies.set(COOKIE, TOKEN)
    plain = {"content-type": "text/plain", "origin": "http://evil.example"}
    assert client.post("/api/save", content=body, headers=plain).status_code == 403
    assert (
        client.post(
            "/api/save", content=body, headers={"content-type": "text/plain", "origin": ORIGIN}
        ).status_code
        == 415
    )
    assert not target.exists()
    # a name that closes a script element is text in a page, never markup
    payload = "x</script><script>alert(1)</script>"
    (runs_dir / payload).mkdir(parents=True)
    page = client.get("/runs/" + payload.replace("/", "%2F"))
    assert "<script>alert(1)" not in page.text
    (runs_dir / "ok").mkdir()
    shown = client.get("/runs/ok")
    assert shown.headers["content-type"].startswith("text/html")
    assert "<script>" not in shown.text.replace('<script src="/static/app.js"></script>', "")


def test_a_64_mb_body_gets_413_at_once_while_the_runs_list_answers(tmp_path):
    import http.client

    server = Server(tmp_path / "runs")
    try:
        server.wait()
        answer: dict[str, object] = {}

        def flood() -> None:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                start = time.monotonic()
                head = (
                    f"POST /api/validate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    f"Origin: {server.url}\r\nCookie: {server.cookie}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n"
                )
                s.sendall(head.encode())
                chunk = b" " * 1_000_000
                try:
                    for _ in range(64):
                        s.sendall(chunk)
                except OSError:
                    pass  # the server answered and closed: it did not read 64 MB
                answer["status"] = s.recv(200).split(b" ")[1]
                answer["s"] = time.monotonic() - start

        thread = threading.Thread(target=flood)
        thread.start()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        times = []
        for _ in range(3):
            start = time.monotonic()
            conn.request("GET", "/api/runs", headers={"Cookie": server.cookie})
            assert conn.getresponse().read()
            times.append(time.monotonic() - start)
        thread.join(60)
        assert answer["status"] == b"413"
        assert max(times) < 1.0, times
        assert float(answer["s"]) < 5.0  # type: ignore[arg-type]
    finally:
        server.stop()
