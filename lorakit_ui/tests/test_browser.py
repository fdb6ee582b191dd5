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
        page.goto(server.url + "/new")
        for picker, choice in (("#backend", "sd"), ("#template", "sd15")):
            if page.input_value(picker) != choice:  # choosing reloads the form
                with page.expect_navigation():
                    page.select_option(picker, choice)
        assert page.input_value("#backend") == "sd" and page.input_value("#template") == "sd15"
        assert page.input_value("[name='learning_rate']") == "1e-4"  # from the template
        # previews after every step keep the run going long enough to stop it midway
        values = tiny_form(
            tiny_sd, images, runs, max_steps="12", sample_every_n_steps="1",
            sample_prompts="[a red circle on a white background]",
        )  # fmt: skip
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
        page.wait_for_function(
            "document.querySelector(\".err[data-for='lora_rank']\").textContent.includes('greater than 0')"
        )
        assert not (runs / "tiny").exists()
        page.fill("[data-key='lora_rank']", "4")
        page.click("#validate")
        page.wait_for_function("document.querySelector('#form-ok').textContent.startsWith('valid')")
        assert error.inner_text() == ""

        # start: the run page, its chart gets points
        page.click("#start")
        page.wait_for_url("**/runs/tiny")
        page.wait_for_function("+document.querySelector('#loss-chart').dataset.points >= 2")
        assert page.locator("#loss-chart polyline.loss").count() == 1

        # stop: the engine's graceful stop writes a checkpoint
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent === 'interrupted'")
        record = json.loads((runs / "tiny" / "run.json").read_text())
        assert record["status"] == "interrupted" and 2 <= record["steps"] < 12
        assert (runs / "tiny" / "checkpoints" / f"step-{record['steps']}").is_dir()
        assert not list((runs / "tiny").glob("*.safetensors"))
        stopped_at = record["steps"]

        # resume: continues from the checkpoint and finishes
        page.wait_for_function("!document.querySelector('#resume').disabled")
        page.click("#resume")
        page.wait_for_function("document.querySelector('#status').textContent === 'finished'")
        record = json.loads((runs / "tiny" / "run.json").read_text())
        assert record["steps"] == 12 and record["resumed_from"].endswith(f"step-{stopped_at}")
        page.wait_for_function("+document.querySelector('#loss-chart').dataset.points === 12")
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
    finally:
        server.stop()
