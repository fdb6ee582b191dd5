"""The first five minutes in headless Chromium, at 1280×800, from an empty runs folder: pick
a template on the picker, fill the form (the data folder chosen with the file browser), see
an invalid value refused beside its field instead of a plan, the plan change when the batch
size changes, take the ladder's next step with one click on a card too small, open the
dataset view and fix a caption (saved to metadata.csv), start the run, and see it finished,
and a live run's progress and time left, on the runs list.

Screenshots of each stage are kept in ``$LORAKIT_UI_SCREENSHOTS`` when set, else in the
test's temporary folder (``.../screenshots/``; pytest keeps the last three runs' folders).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest
from test_browser import CHROMIUM, browser, until  # noqa: F401 - the browser fixture
from test_routes import fake_run
from ui_helpers import Server, tiny_form

PLAN_DONE = "!document.querySelector('#plan-panel').dataset.pending"
TOTAL = "+document.querySelector('#plan-panel').dataset.total"


def fill(page, values: dict[str, str]) -> None:
    for key, value in values.items():
        selector = f"[data-key='{key}']"
        if page.eval_on_selector(selector, "el => el.tagName") == "SELECT":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)


@pytest.mark.slow
def test_the_first_five_minutes_in_a_browser(browser, tiny_sd, images, tmp_path):  # noqa: F811
    from lorakit.app import read_metadata

    assert Path(CHROMIUM).is_file()
    shots = Path(os.environ.get("LORAKIT_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    runs = tmp_path / "runs"  # empty; its parent (tmp_path, holding data/) is browsable
    hostile = "<img src=x onerror=alert(1)>"  # a caption and a folder name: text, not markup
    table = (images / "metadata.csv").read_text().replace("a drawing of a yellow bird", hostile)
    (images / "metadata.csv").write_text(table)
    (tmp_path / "<svg onload=alert(2)>").mkdir()
    server = Server(runs)
    try:
        server.wait()
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(240_000)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        blocked: list[str] = []
        page.on(
            "console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(f"{server.url}/?token={server.token}")
        until(page, "document.querySelector('#runs tbody').textContent.includes('no runs yet')")
        page.click("header a[href='/new']")

        # the picker, in plain words; a card opens its template's form
        with page.expect_navigation():
            page.click(".card[data-backend='sd'][data-template='sd15']")
        card = page.locator(".card.chosen")
        assert "Stable Diffusion 1.5" in card.inner_text()
        assert page.evaluate("document.documentElement.scrollHeight") < 2 * 800
        page.screenshot(path=str(shots / "1-new-run.png"))

        # the form: the tiny stand-in's values; the data folder from the file browser
        values = tiny_form(tiny_sd, images, runs, gradient_checkpointing="true")
        values.pop("train_data_dir")
        page.click("#advanced summary")
        fill(page, values)
        page.fill("[data-key='train_data_dir']", "")
        page.click("button[data-browse='train_data_dir']")
        page.click(f"#browser-list button:text-is('{tmp_path}')")
        until(page, f"document.querySelector('#browser-path').textContent === '{tmp_path}'")
        assert "<svg onload=alert(2)>/" in page.inner_text("#browser-list")
        page.click("#browser-list li[data-name='data'] button")
        until(page, f"document.querySelector('#browser-path').textContent === '{images}'")
        page.click("#browser-pick-dir")
        assert page.input_value("[data-key='train_data_dir']") == str(images)
        page.click("#advanced summary")  # folded again

        # the plan follows the form: a smaller batch, a smaller peak
        until(page, PLAN_DONE)
        assert page.inner_text("#plan-verdict").startswith("fits")
        at_two = page.evaluate(TOTAL)
        # an invalid form gets no plan: the config's error beside its field
        page.fill("[data-key='lora_rank']", "0")
        until(page, PLAN_DONE)
        assert "greater than 0" in page.inner_text(".err[data-for='lora_rank']")
        assert page.inner_text("#plan-error") == "fix lora_rank first"
        page.fill("[data-key='lora_rank']", "4")
        page.fill("[data-key='batch_size']", "1")
        until(page, PLAN_DONE)
        assert page.inner_text(".err[data-for='lora_rank']") == ""
        at_one = page.evaluate(TOTAL)
        assert 0 < at_one < at_two
        page.screenshot(path=str(shots / "2-plan.png"))

        # a card too small: the ladder's next step is one click
        page.fill("[data-key='batch_size']", "2")
        page.select_option("#plan-gpu", "other")
        page.fill("#plan-gpu-other", "0.006")
        until(page, PLAN_DONE)
        assert page.inner_text("#plan-verdict").startswith("does not fit")
        page.screenshot(path=str(shots / "3-ladder.png"))
        page.click("#plan-ladder button.next-step")
        assert page.input_value("[data-key='batch_size']") == "1"
        assert page.input_value("[data-key='gradient_accumulation_steps']") == "2"
        assert page.evaluate("document.querySelector('#plan-panel').dataset.pending") == "1"

        # the dataset view: thumbnails, captions, buckets; a caption fixed and saved
        page.click("#see-data")
        until(page, "document.querySelector('#dataset').dataset.state === 'shown'")
        assert page.locator("#dataset-rows figure").count() == 4
        assert "32×32 × 4" in page.inner_text("#dataset-buckets")
        until(page, "document.querySelector('#dataset-rows img').naturalWidth === 32")
        shown = page.locator("#dataset-rows figure[data-name='img_002.png'] textarea")
        assert shown.input_value().startswith(hostile)
        caption = page.locator("#dataset-rows figure[data-name='img_001.png'] textarea")
        caption.fill("a green dog in the park, fixed in the page")
        page.click("#dataset-save")
        until(page, "document.querySelector('#dataset').dataset.saved === '1'")
        page.screenshot(path=str(shots / "4-dataset.png"))
        # captioning with a labeler (a vision-language one too) is the label page on this folder
        label = page.get_attribute("#dataset-label", "href") or ""
        assert label == "/label?data_dir=" + urllib.parse.quote(str(images), safe="")
        _, rows = read_metadata(images / "metadata.csv")
        assert rows[1] == {
            "file_name": "img_001.png",
            "text": "a green dog in the park, fixed in the page",
        }
        page.keyboard.press("Escape")

        # start: the run trains and the runs list shows its progress
        page.click("#start")
        page.wait_for_url("**/runs/tiny")
        until(page, "document.querySelector('#status').textContent === 'finished'")
        fake_run(runs, "live", "running", [1.0] * 3, total_steps=12)  # 3 steps in 3 s
        page.goto(server.url + "/")
        row = page.locator("tr[data-run='tiny']")
        row.wait_for()
        assert "finished" in row.inner_text() and "6 / 6" in row.inner_text()
        assert row.locator("progress").get_attribute("value") == "6"
        assert "ETA" not in row.inner_text()
        live = page.locator("tr[data-run='live']")
        assert "3 / 12" in live.inner_text() and "ETA 9 s" in live.inner_text()
        assert live.locator("progress").get_attribute("max") == "12"
        page.screenshot(path=str(shots / "5-runs.png"))
        assert blocked == [] and dialogs == []
    finally:
        server.stop()
