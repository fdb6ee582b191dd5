"""In headless Chromium: tick two finished runs on the runs list and compare them (curves,
config differences, sample grids), render a sample of an image run, chat with a text run
(adapter on and off). Screenshots are kept in ``build/test-artifacts/ui/`` (or
``$LORAKIT_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_browser import browser, until  # noqa: F401 - the fixture, shared
from test_try_and_compare import PROMPT, cli_chat, pixels
from ui_helpers import Server

from lorakit.api import printable
from lorakit.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    folder = Path(os.environ.get("LORAKIT_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
    folder = folder / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_compare_two_runs_sample_and_chat_in_a_browser(
    browser,  # noqa: F811 - the fixture imported above
    finished_runs,
    capsys,
    tmp_path,
):
    import numpy as np

    runs = finished_runs["runs"]
    shots = artifacts()
    server = Server(runs)
    try:
        server.wait()
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(120_000)
        blocked: list[str] = []
        page.on(
            "console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(f"{server.url}/?token={server.token}")

        # the runs list: tick two runs, compare them
        for name in ("sd-a", "sd-b"):
            page.locator(f"tr[data-run='{name}'] input.pick-run").check()
        page.click("#compare-selected")
        page.wait_for_url("**/compare?run=sd-a&run=sd-b")
        until(page, "document.body.dataset.compared === '2'", 60)
        assert page.get_attribute("#compare-chart", "data-lines") == "2"
        keys = page.eval_on_selector_all(
            "#config-diff tbody tr", "rows => rows.map(r => r.dataset.key)"
        )
        assert keys == ["learning_rate", "lora_rank"]
        assert page.inner_text("#config-diff tbody tr[data-key='learning_rate']").split() == [
            "learning_rate",
            "0.001",
            "0.005",
        ]
        grid = page.locator("table.sample-grid[data-run='sd-a'] img")
        assert grid.count() == 4  # 2 steps × 2 prompts
        until(
            page,
            "[...document.querySelectorAll('table.sample-grid img')].every(i => i.naturalWidth > 0)",
            60,
        )
        page.check("input[name='x-axis'][value='time']")
        assert "seconds" in (page.text_content("#compare-chart") or "")
        page.screenshot(path=str(shots / "compare.png"), full_page=True)

        # an image run: render a sample, the pixels of lorakit sample
        page.click("#compare-runs a >> text=sd-a")
        page.wait_for_url("**/runs/sd-a")
        page.locator("#sample-panel").wait_for(state="visible")
        assert page.input_value("#sample-prompt") == "a red circle"  # the run's first prompt
        page.fill("#sample-weight", "0.7")
        page.fill("#sample-seed", "3")
        page.fill("#sample-steps", "2")
        page.click("#sample-render")
        until(page, "document.querySelector('#sample-image').naturalWidth > 0", 240)
        source = page.get_attribute("#sample-image", "src")
        shown = page.request.get(server.url + source).body()
        out = tmp_path / "cli"
        run = runs / "sd-a"
        code, _, err = run_cli(
            capsys,
            "sample",
            "--config",
            run / "config.yaml",
            "--lora",
            f"{run / 'sd-a.safetensors'}:0.7",
            "-p",
            "a red circle",
            "--seed",
            "3",
            "--steps",
            "2",
            "-o",
            out,
        )
        assert code == 0, err
        assert np.array_equal(pixels(shown), pixels((out / "sd-a-00.png").read_bytes()))
        page.screenshot(path=str(shots / "sample.png"), full_page=True)

        # a text run: chat, the adapter on and off, as lorakit chat answers
        page.goto(server.url + "/runs/chat")
        page.locator("#chat-panel").wait_for(state="visible")
        page.fill("#chat-prompt", PROMPT)
        page.fill("#chat-tokens", "16")
        page.click("#chat-send")
        page.locator("#chat-off .turn.assistant").wait_for()
        answers = {
            side: page.eval_on_selector(
                f"#chat-{side} .turn.assistant", "p => p.lastChild.textContent"
            )
            for side in ("on", "off")
        }
        base = finished_runs["llama"]
        assert printable(answers["on"], newlines=True) == cli_chat(
            capsys, base, PROMPT, runs / "chat"
        )
        assert printable(answers["off"], newlines=True) == cli_chat(capsys, base, PROMPT)
        page.screenshot(path=str(shots / "chat.png"), full_page=True)
        assert blocked == []
    finally:
        server.stop()
