"""``lorakit version --check`` and train's quiet notice, against an index served on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import toy_config  # imported here: importing conftest sets LORAKIT_NO_UPDATE_CHECK

from lorakit import __version__
from lorakit.diagnostics import update_check
from lorakit.plugins import build_plugins, set_plugins
from lorakit.testing import run_cli, write_config

CHANGELOG = """# lorakit

Some README text.

## [Unreleased]

### Added
- something not released yet

## [0.3.0] - 2026-12-20

### Changed
- faster latent caching

## [0.2.0] - 2026-12-10

### Added
- `lorakit doctor`

## [0.1.0] - 2026-11-30

### Added
- first release
"""


class Index:
    """A tiny package index: ``GET /pypi/NAME/json`` from a dict, counting requests."""

    def __init__(self) -> None:
        self.packages: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.delay = 0.0
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                index.requests.append(self.path)
                time.sleep(index.delay)
                parts = self.path.strip("/").split("/")
                data = None
                if len(parts) == 3 and parts[0] == "pypi" and parts[2] == "json":
                    data = index.packages.get(parts[1])
                if data is None:
                    self.send_error(404)
                    return
                body = data if isinstance(data, bytes) else json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # a client that gave up (the timeout tests) leaves a broken pipe: not worth a trace
        # printed into whichever test runs next in this process
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pypi"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def publish(self, name: str, version: str, description: str = "", **releases: Any) -> None:
        files = {v: [{"yanked": bool(y)}] for v, y in releases.items()}
        files.setdefault(version, [{"yanked": False}])
        self.packages[name] = {
            "info": {"name": name, "version": version, "description": description},
            "releases": files,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Index]:
    server = Index()
    monkeypatch.setenv("LORAKIT_INDEX_URL", server.url)
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LORAKIT_NO_UPDATE_CHECK", raising=False)
    # The 3 s limit is for users; a test machine under load may need longer to answer.
    monkeypatch.setattr(update_check, "TIMEOUT_S", 20.0)
    yield server
    server.close()


@pytest.fixture
def only_lorakit() -> Iterator[None]:
    """No plugins: the check asks about lorakit alone."""
    set_plugins(build_plugins(entry_points=False))
    yield
    set_plugins(None)


@pytest.fixture
def with_plugin() -> Iterator[None]:
    """lorakit plus one third-party plugin distribution, lorakit-acme 1.0.0."""
    plugins = build_plugins(entry_points=False)
    plugins.add(types.ModuleType("acme"), name="acme", distribution="lorakit-acme", version="1.0.0")
    set_plugins(plugins)
    yield
    set_plugins(None)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, *args)
    return code, out + err


def test_outdated_prints_upgrade_and_changelog(index, only_lorakit, capsys):
    index.publish("lorakit", "0.3.0", CHANGELOG, **{"0.1.0": False, "0.2.0": False})
    code, out = run(capsys, "version", "--check")
    assert code == 0
    assert f"lorakit 0.3.0 is out (you have {__version__})" in out
    assert "upgrade: pip install -U lorakit" in out
    assert "faster latent caching" in out and "`lorakit doctor`" in out
    assert "first release" not in out  # the installed version's own entry
    assert "not released yet" not in out


def test_up_to_date(index, only_lorakit, capsys):
    index.publish("lorakit", __version__, CHANGELOG)
    code, out = run(capsys, "version", "--check")
    assert code == 0
    assert f"lorakit {__version__} is current" in out
    assert "upgrade:" not in out and "is out" not in out


def test_unreachable_index_is_fast_and_not_an_error(monkeypatch, tmp_path, only_lorakit, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LORAKIT_INDEX_URL", f"http://127.0.0.1:{port}/pypi")
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path))
    t0 = time.monotonic()
    code, out = run(capsys, "version", "--check")
    assert code == 0
    assert time.monotonic() - t0 < 3
    assert "lorakit: could not check" in out
    assert not (tmp_path / "update-check.json").exists()  # failures are not cached


def test_slow_index_gives_up_after_the_timeout(index, only_lorakit, monkeypatch, capsys):
    monkeypatch.setattr(update_check, "TIMEOUT_S", 0.3)
    index.publish("lorakit", "0.3.0")
    index.delay = 2.0
    t0 = time.monotonic()
    code, out = run(capsys, "version", "--check")
    assert code == 0 and time.monotonic() - t0 < 1.5
    assert "could not check (no answer within 0.3 s)" in out


def test_answer_is_cached_for_a_day(index, only_lorakit, capsys):
    index.publish("lorakit", "0.3.0", CHANGELOG)
    run(capsys, "version", "--check")
    assert len(index.requests) == 1
    code, out = run(capsys, "version", "--check")
    assert len(index.requests) == 1  # second check: no request
    assert "lorakit 0.3.0 is out" in out and "faster latent caching" in out
    cache = update_check.cache_path()
    data = json.loads(cache.read_text())
    data[f"{index.url}/lorakit/json"]["t"] -= update_check.CACHE_TTL_S + 1
    cache.write_text(json.dumps(data))
    run(capsys, "version", "--check")
    assert len(index.requests) == 2  # a day later: asked again


def test_plugins_are_checked_and_upgraded_together(index, with_plugin, capsys):
    index.publish("lorakit", "0.3.0")
    index.publish("lorakit-acme", "1.1.0")
    code, out = run(capsys, "version", "--check")
    assert code == 0
    assert "lorakit-acme 1.1.0 is out (you have 1.0.0)" in out
    assert "upgrade: pip install -U lorakit lorakit-acme" in out
    assert sorted(index.requests) == ["/pypi/lorakit-acme/json", "/pypi/lorakit/json"]


def test_upgrade_command_moves_known_plugins_with_lorakit():
    from lorakit.diagnostics.update_check import Release, upgrade_command

    releases = [
        Release("lorakit", "0.1.0", "0.2.0"),
        Release("lorakit-sd", "0.1.0", "0.1.0"),  # current, but pinned to lorakit 0.1.x
        Release("acme-private", "1.0.0", None, error="not on the index"),
    ]
    assert upgrade_command(releases) == "pip install -U lorakit lorakit-sd"
    assert upgrade_command(releases[1:]) is None


def test_plugin_missing_from_index_and_json_output(index, with_plugin, capsys):
    index.publish("lorakit", __version__)
    code, out = run(capsys, "version", "--check", "--json")
    assert code == 0
    report = json.loads(out)
    checked = {r["name"]: r for r in report["check"]}
    assert checked["lorakit"]["behind"] is False and checked["lorakit"]["latest"] == __version__
    assert checked["lorakit-acme"]["error"] == "not on the index"


def test_plugin_installed_from_a_folder_is_not_looked_up(index, with_plugin, monkeypatch, capsys):
    monkeypatch.setattr(update_check, "_installed_from_index", lambda dist: False)
    index.publish("lorakit", __version__)
    code, out = run(capsys, "version", "--check")
    assert "lorakit-acme: installed from a folder or VCS URL, not looked up" in out
    assert index.requests == ["/pypi/lorakit/json"]


def test_garbage_answer_is_could_not_check(index, only_lorakit, capsys):
    index.packages["lorakit"] = b"<html>not json</html>"  # type: ignore[assignment]
    code, out = run(capsys, "version", "--check")
    assert code == 0 and "lorakit: could not check" in out


def test_train_notice_reads_only_the_cache(index, monkeypatch):
    assert update_check.quiet_notice() is None  # nothing cached: nothing to say
    index.publish("lorakit", "0.3.0")
    update_check.check({"lorakit": __version__})
    asked = len(index.requests)
    notice = update_check.quiet_notice()
    assert notice is not None and f"lorakit 0.3.0 is out (you have {__version__})" in notice
    index.close()  # even with the index gone the notice comes from the cache
    assert update_check.quiet_notice() == notice
    assert len(index.requests) == asked
    monkeypatch.setenv("LORAKIT_NO_UPDATE_CHECK", "1")
    assert update_check.quiet_notice() is None


def test_train_prints_the_notice_without_asking(index, toy_plugins, tmp_path, monkeypatch, capsys):
    index.publish("lorakit", "0.3.0")
    update_check.check({"lorakit": __version__})
    asked = len(index.requests)
    config = write_config(tmp_path / "toy.yaml", toy_config(tmp_path))
    result = types.SimpleNamespace(
        interrupted=False,
        final_loss=0.5,
        eval_loss=None,
        steps=1,
        elapsed_s=0.1,
        output_dir=tmp_path,
        outputs=[],
    )
    import lorakit.engine  # light: train itself loads on first use

    monkeypatch.setattr(lorakit.engine, "train", lambda *a, **k: result, raising=False)
    code, out = run(capsys, "train", "--config", str(config), "--no-progress")
    assert code == 0, out
    assert "lorakit 0.3.0 is out" in out
    assert len(index.requests) == asked
    monkeypatch.setenv("LORAKIT_NO_UPDATE_CHECK", "1")
    code, out = run(capsys, "train", "--config", str(config), "--no-progress")
    assert "is out" not in out


# -- pieces --------------------------------------------------------------------------


def test_parse_changelog_versions_and_sections():
    entries = update_check.parse_changelog(CHANGELOG + "\n```\n## [9.9.9] in a code block\n```\n")
    assert [v for v, _ in entries] == ["0.3.0", "0.2.0", "0.1.0"]
    assert entries[1][1] == ["## [0.2.0] - 2026-12-10", "### Added", "- `lorakit doctor`"]
    text = "### v1.2.0 (2026-01-01)\n- a\n### 1.1.0\n- b\n## Other\n- c\n"
    entries = update_check.parse_changelog(text)
    assert entries == [
        ("1.2.0", ["### v1.2.0 (2026-01-01)", "- a"]),
        ("1.1.0", ["### 1.1.0", "- b"]),
    ]
    lines = update_check.changes_between(entries, "1.1.0", "1.2.0")
    assert lines == ["### v1.2.0 (2026-01-01)", "- a"]


def test_latest_skips_prereleases_and_yanked():
    data = {
        "info": {"version": "0.5.0"},
        "releases": {
            "0.2.0": [{"yanked": False}],
            "0.4.0": [{"yanked": True}],
            "0.5.0rc1": [{}],
            "0.3.0": [{}],
            "0.9.0": [],
        },
    }
    assert update_check.latest_version(data, "0.1.0") == "0.3.0"
    assert update_check.latest_version(data, "0.5.0a1") == "0.5.0rc1"
    assert update_check.latest_version({"info": {"version": "2.0"}}, "1.0") == "2.0"
