"""The page in headless Chromium (Debian's /usr/bin/chromium through Playwright), end to end:
a config for the tiny SD stand-in from the sd15 template, a wrong value refused beside its
field, a run started, its chart getting points, stopped with a checkpoint, resumed, finished,
and its .safetensors downloaded.

Set ``LORAKIT_UI_SCREENSHOT=docs/img/ui-run.png`` to refresh the screenshot in docs/ui.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from ui_helpers import Server, tiny_form

CHROMIUM = os.environ.get("LORAKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def until(page, expression: str, timeout: float = 240.0) -> None:
    """Poll ``expression`` from here: Playwright's wait_for_function evaluates a string in the
    page, which the page's CSP (no eval) forbids, as it should."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(200)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        reason = f"chromium not found at {CHROMIUM} (make test installs Debian's chromium as root)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.mark.slow
def test_set_up_run_stop_resume_and_download_in_a_browser(browser, tiny_sd, images, tmp_path):
    from safetensors import safe_open

    runs = tmp_path / "runs"
    server = Server(runs)
    try:
        server.wait()
        page = browser.new_page(viewport={"width": 1100, "height": 1400}, accept_downloads=True)
        page.set_default_timeout(240_000)  # a busy machine; ~40 s on an idle one
        blocked: list[str] = []  # the page must work under its CSP (no inline script)
        page.on(
            "console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(f"{server.url}/?token={server.token}")  # the printed URL sets the cookie
        assert page.url == server.url + "/"
        page.goto(server.url + "/new")
        for picker, choice in (("#backend", "sd"), ("#template", "sd15")):
            if page.input_value(picker) != choice:  # choosing reloads the form
                with page.expect_navigation():
                    page.select_option(picker, choice)
        assert page.input_value("#backend") == "sd" and page.input_value("#template") == "sd15"
        assert page.input_value("[name='learning_rate']") == "1e-4"  # from the template
        # previews after every step keep the run going long enough to stop it midway
        values = tiny_form(
            tiny_sd,
            images,
            runs,
            max_steps="12",
            sample_every_n_steps="1",
            sample_prompts="[a red circle on a white background]",
        )
        page.click("#advanced summary")  # the keys beyond the basic ones
        for key, value in values.items():
            selector = f"[data-key='{key}']"
            if page.eval_on_selector(selector, "el => el.tagName") == "SELECT":
                page.select_option(selector, value)
            else:
                page.fill(selector, value)

        # a wrong value: the CLI's one line, beside its field; nothing starts
        page.fill("[data-key='lora_rank']", "0")
        page.click("#validate")
        error = page.locator(".err[data-for='lora_rank']")
        error.wait_for(state="visible")
        shown = page.inner_text("#yaml").splitlines()
        line = 1 + next(i for i, text in enumerate(shown) if text.startswith("lora_rank:"))
        assert error.inner_text() == (
            f"{values['config_path']}:{line}: lora_rank: input should be greater than 0 (got 0)"
        )
        page.click("#start")
        until(
            page,
            "document.querySelector(\".err[data-for='lora_rank']\").textContent.includes('greater than 0')",
        )
        assert not (runs / "tiny").exists()
        page.fill("[data-key='lora_rank']", "4")
        page.click("#validate")
        until(page, "document.querySelector('#form-ok').textContent.startsWith('valid')")
        assert error.inner_text() == ""

        # start: the run page, its chart gets points
        page.click("#start")
        page.wait_for_url("**/runs/tiny")
        until(page, "+document.querySelector('#loss-chart').dataset.points >= 2")
        assert page.locator("#loss-chart polyline.loss").count() == 1

        # stop: the engine's graceful stop writes a checkpoint
        page.click("#stop")
        until(page, "document.querySelector('#status').textContent === 'interrupted'")
        record = json.loads((runs / "tiny" / "run.json").read_text())
        assert record["status"] == "interrupted" and 2 <= record["steps"] < 12
        assert (runs / "tiny" / "checkpoints" / f"step-{record['steps']}").is_dir()
        assert not list((runs / "tiny").glob("*.safetensors"))
        stopped_at = record["steps"]

        # resume: continues from the checkpoint and finishes
        until(page, "!document.querySelector('#resume').disabled")
        page.click("#resume")
        until(page, "document.querySelector('#status').textContent === 'finished'")
        record = json.loads((runs / "tiny" / "run.json").read_text())
        assert record["steps"] == 12 and record["resumed_from"].endswith(f"step-{stopped_at}")
        until(page, "+document.querySelector('#loss-chart').dataset.points === 12")
        page.locator("#samples img").first.wait_for()
        assert "a red circle" in page.inner_text("#samples")
        assert "resuming from" in page.inner_text("#log")

        # download the kohya .safetensors the run exported
        with page.expect_download() as download_info:
            page.click("#downloads a[href$='/tiny.safetensors']")
        downloaded = tmp_path / "downloaded.safetensors"
        download_info.value.save_as(downloaded)
        exported = runs / "tiny" / "tiny.safetensors"
        assert downloaded.read_bytes() == exported.read_bytes()
        with safe_open(str(downloaded), "pt") as f:
            assert f.metadata()["ss_steps"] == "12"
            names = f.keys()
        assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in names)

        shot = os.environ.get("LORAKIT_UI_SCREENSHOT")
        if shot:
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=shot, full_page=False)

        # the runs list shows it finished
        page.goto(server.url + "/")
        row = page.locator("tr[data-run='tiny']")
        row.wait_for()
        assert "finished" in row.inner_text() and "12" in row.inner_text()
        assert blocked == []
    finally:
        server.stop()


HOSTILE = """<!doctype html><html><body><h1>a page elsewhere</h1>
<form id="f" method="POST" action="{url}/api/save" enctype="text/plain">
<input name='{{"backend": "sd", "values": {{"config_path": "{target}", "x": "' value='"}}}}'></form>
<iframe id="frame" src="{url}/"></iframe>
<script>
const opts = (body) => ({{method: "POST", mode: "no-cors", credentials: "include",
  body: JSON.stringify(body),
  headers: {{"content-type": "text/plain"}}}});
fetch("{url}/api/start", opts({{backend: "sd", values: {{config_path: "{target}"}}}}));
fetch("{url}/api/metadata", opts({{data_dir: "{data}", columns: ["file_name"], rows: []}}));
fetch("{url}/api/runs/a/stop", {{method: "POST", mode: "no-cors", credentials: "include"}});
</script></body></html>"""


@pytest.mark.slow
def test_a_page_elsewhere_changes_nothing_and_names_never_run_as_script(browser, images, tmp_path):
    import http.server
    import threading
    import urllib.parse

    from ui_helpers import free_port

    runs = tmp_path / "runs"
    payload = 'x"><img src=x onerror=alert(1)><svg onload=alert(2)> #1?a=b'  # no "/"
    fake = runs / payload
    fake.mkdir(parents=True)
    (fake / "run.json").write_text(json.dumps({"status": "finished", "steps": 1}))
    (fake / "config.yaml").write_text("output_dir: " + json.dumps(str(fake)) + "\n")
    target = tmp_path / "bashrc"
    metadata = (images / "metadata.csv").read_bytes()
    server = Server(runs)
    port = free_port()
    html_page = HOSTILE.format(url=server.url, target=target, data=images).encode()

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(html_page)

        def log_message(self, *args: object) -> None:
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hostile)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        server.wait()
        page = browser.new_page()
        page.set_default_timeout(60_000)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{server.url}/?token={server.token}")  # logged in: the cookie is there
        page.locator("#runs tbody tr").first.wait_for()
        assert payload in page.inner_text("#runs")  # shown as text
        link = page.locator("#runs a").first.get_attribute("href")
        assert urllib.parse.unquote(link) == "/runs/" + payload
        assert "#" not in link and "?" not in link  # each segment encoded
        page.click("#runs a")
        until(page, "document.querySelector('#status').textContent === 'finished'")
        assert page.inner_text("#run-name") == payload
        page.goto(server.url + "/runs/x%3C/script%3E%3Cscript%3Ealert(3)%3C/script%3E")
        page.goto(server.url + "/label?data_dir=%22%3E%3Cscript%3Ealert(4)%3C/script%3E")
        page.wait_for_timeout(300)
        assert dialogs == []

        # the page elsewhere (another loopback port: the same site, so the cookie is sent)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_timeout(1500)
        framed = page.frame_locator("#frame").locator("body")
        assert "Runs" not in (framed.inner_text(timeout=5000) if framed.count() else "")
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert "cross-origin request refused" in page.content()
        assert not target.exists() and (images / "metadata.csv").read_bytes() == metadata
        assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == [payload]
        log = server.output()
        for route in ("/api/save", "/api/start", "/api/metadata", "/api/runs/a/stop"):
            assert f"refused POST {route}: cross-origin request refused" in log, (route, log)
        assert dialogs == []
    finally:
        elsewhere.shutdown()
        server.stop()
