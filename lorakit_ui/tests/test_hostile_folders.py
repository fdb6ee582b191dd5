"""The page and a runs folder a stranger filled, through the real server (``lorakit ui`` in
a subprocess, its memory capped): a FIFO lock and a ``run.json -> /dev/zero`` neither block
nor exhaust it; links are neither served nor zipped; an unrelated cookie does not lock the
user out; a half-sent request is closed; NUL bytes and long names are 4xx with the security
headers; Stop never signals a process through a lock that is not the run's own."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from ui_helpers import Server

HOLD = (
    "import sys, time\nfrom lorakit.engine.runlock import RunLock\n"
    "lock = RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n"
)
SECRET = b"SECRET-BYTES-OUTSIDE-THE-RUNS-FOLDER"
RECORD = json.dumps({"status": "finished", "steps": 1, "final_loss": 0.5})


def _run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(RECORD)
    return folder


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("hostile")
    runs = root / "runs"
    for name in ("secret.yaml", "secret.safetensors", "secret.png"):
        (root / name).write_bytes(SECRET)
    os.mkfifo(_run(runs / "fifo") / ".lorakit.lock")
    (runs / "zero").mkdir(parents=True)
    (runs / "zero" / "run.json").symlink_to("/dev/zero")
    links = _run(runs / "links")
    (links / "config.yaml").symlink_to(root / "secret.yaml")
    (links / "leak.safetensors").symlink_to(root / "secret.safetensors")
    (links / "samples").mkdir()
    (links / "samples" / "s-0.png").symlink_to(root / "secret.png")
    (links / "adapter").mkdir()
    (links / "adapter" / "adapter_config.json").write_text("{}")
    (links / "adapter" / "adapter_model.safetensors").symlink_to(root / "secret.safetensors")
    data = root / "data"
    data.mkdir()
    (data / "img.png").symlink_to(root / "secret.png")
    victim = _run(runs / "victim")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(victim)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    (_run(runs / "foreign") / ".lorakit.lock").symlink_to("../victim/.lorakit.lock")
    os.link(victim / ".lorakit.lock", _run(runs / "hard") / ".lorakit.lock")
    server = Server(runs, memory_limit=6 * 2**30)
    try:
        server.wait()
        yield server, root, holder
    finally:
        server.stop()
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def fetch(server: Server, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.request("GET", path, headers={"Cookie": server.cookie, **headers})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_a_fifo_lock_and_a_record_linked_to_dev_zero_neither_block_nor_exhaust_the_page(
    hostile,
):
    server, _, _ = hostile
    for _ in range(3):
        start = time.monotonic()
        status, _, body = fetch(server, "/api/runs")
        assert status == 200 and time.monotonic() - start < 10
    listed = json.loads(body)
    assert "fifo" in [r["name"] for r in listed["runs"]]
    assert any(n.startswith("zero: skipped") for n in listed["notes"]), listed["notes"]
    status, _, body = fetch(server, "/api/runs/fifo")
    assert status == 200 and json.loads(body)["status"] == "finished"
    assert fetch(server, "/api/runs/zero")[0] in (200, 404)
    assert server.process.poll() is None


def test_links_in_a_run_folder_and_a_dataset_are_neither_served_nor_zipped(hostile):
    server, root, _ = hostile
    for rel in (
        "config.yaml",
        "leak.safetensors",
        "samples/s-0.png",
        "adapter/adapter_model.safetensors",
    ):
        status, headers, body = fetch(server, f"/runs/links/files/{rel}")
        assert status == 404 and SECRET not in body, rel
        assert "content-security-policy" in headers
    run = json.loads(fetch(server, "/api/runs/links")[2])
    assert run["config"] == "" and run["samples"] == []
    assert "leak.safetensors" not in run["downloads"]
    assert "adapter/adapter_model.safetensors" not in run["downloads"]
    status, _, body = fetch(server, "/runs/links/zip/adapter")
    assert status == 200 and SECRET not in body
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["adapter/adapter_config.json"]
    query = f"data_dir={quote(str(root / 'data'))}&name=img.png"
    status, _, body = fetch(server, f"/api/image?{query}")
    assert status == 404 and SECRET not in body


def test_an_unrelated_cookie_on_localhost_does_not_lock_the_user_out(hostile):
    server, _, _ = hostile
    status, _, _ = fetch(server, "/api/runs", Cookie=f'prefs={{"a":"b"}}; {server.cookie}')
    assert status == 200
    status, _, _ = fetch(server, "/api/runs", Cookie='prefs={"a":"b"}')
    assert status == 403


def test_a_half_sent_request_is_closed_within_the_header_timeout(hostile):
    from lorakit_ui.connections import HEADER_TIMEOUT

    server, _, _ = hostile
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEADER_TIMEOUT + 10) as s:
        s.sendall(f"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-A: ".encode())
        start = time.monotonic()
        assert fetch(server, "/api/runs")[0] == 200  # others are served meanwhile
        try:
            closed = s.recv(100) == b""
        except ConnectionResetError:
            closed = True
        assert closed and time.monotonic() - start < HEADER_TIMEOUT + 5


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/a%00b",
        "/runs/a%00b/files/config.yaml",
        "/runs/a%00b",
        "/api/runs/" + "x" * 300,
        "/runs/" + "x" * 300 + "/files/config.yaml",
        "/runs/links/files/" + "y" * 300,
        "/runs/" + "x" * 300 + "/zip/adapter",
    ],
)
def test_nul_bytes_and_long_names_are_4xx_with_the_security_headers(hostile, path):
    server, _, _ = hostile
    status, headers, _ = fetch(server, path)
    assert 400 <= status < 500, (path, status)
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_stop_signals_only_the_process_holding_the_runs_own_lock(hostile):
    server, root, holder = hostile
    for name in ("foreign", "hard", "victim"):  # a lock with a second name is no one's
        status, answer = server.post(f"/api/runs/{name}/stop", {})
        assert status == 409 and answer["ok"] is False, answer
        time.sleep(0.5)
        assert holder.poll() is None, f"Stop of {name} ended another run"
    (root / "runs" / "hard" / ".lorakit.lock").unlink()
    status, answer = server.post("/api/runs/victim/stop", {})
    assert status == 200, answer
    assert holder.wait(timeout=20) == -signal.SIGTERM


def test_a_route_that_fails_is_a_500_with_the_security_headers(client, monkeypatch):
    def broken(name: str) -> None:
        raise RuntimeError("a bug\nwith two lines")

    monkeypatch.setattr(client.app.state.runs, "summary", broken)
    answer = client.get("/api/runs/anything")
    assert answer.status_code == 500
    assert answer.json() == {"ok": False, "error": "the server could not answer this request"}
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
