"""The label page's labeler options, through the real app: what a labeler declares is what
the page lists, a request's options reach ``lorakit label`` as ``--option`` values checked
by the same validation, and the captions are those the CLI writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorakit.metadata_csv import read_metadata
from lorakit.testing import run_cli

TASK = "<CAPTION>"  # not the default <DETAILED_CAPTION>


@pytest.fixture(scope="module")
def tiny_florence2(tmp_path_factory) -> Path:
    from lorakit_labelers.testing_vlm import build_tiny_florence2

    from lorakit.testing import one_thread

    with one_thread():
        return build_tiny_florence2(tmp_path_factory.mktemp("models") / "florence2")


def generated(model_dir: Path, folder: Path, names: list[str], task: str) -> list[str]:
    """What transformers' own generate answers for each image (8 new tokens), as captions."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    answers = []
    for name in names:
        inputs = processor(
            images=Image.open(folder / name).convert("RGB"), text=task, return_tensors="pt"
        )
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        text = " ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())
        answers.append(f"sks, {text}" if text else "sks")
    return answers


def test_the_labelers_route_lists_what_each_labeler_declares(client):
    from lorakit.api import get_registries
    from lorakit.app import describe_options

    listed = {item["name"]: item for item in client.get("/api/labelers").json()["labelers"]}
    registries = get_registries()
    assert set(listed) == set(registries.labelers.names()) >= {"florence2", "qwen-vl"}
    for name, item in listed.items():
        assert item["options"] == describe_options(registries.labelers.get(name)), name
    florence2 = {o["name"]: o for o in listed["florence2"]["options"]}
    assert [o["name"] for o in listed["florence2"]["options"]][:2] == ["model", "prompt"]
    assert florence2["prompt"]["default"] == "<DETAILED_CAPTION>"
    assert (
        florence2["max_new_tokens"] | {"minimum": 1, "maximum": 4096} == florence2["max_new_tokens"]
    )
    assert florence2["device"]["choices"] == ["auto", "cuda", "cpu"]


def test_a_model_and_prompt_from_the_page_write_what_the_cli_writes(
    client, images, tiny_florence2, tmp_path, capsys
):
    (images / "metadata.csv").unlink()
    by_cli = shutil.copytree(images, tmp_path / "by_cli")
    options = {"model": str(tiny_florence2), "prompt": TASK, "max_new_tokens": 8}
    answer = client.post(
        "/api/label",
        json={
            "data_dir": str(images),
            "labeler": "florence2",
            "prefix": "sks",
            "batch_size": "3",
            "options": options,
        },
    ).json()
    assert answer["ok"], answer
    code, _, err = run_cli(
        capsys,
        "label",
        by_cli,
        "--labeler",
        "florence2",
        "--prefix",
        "sks",
        *[arg for key, value in options.items() for arg in ("--option", f"{key}={value}")],
    )
    assert code == 0, err
    page_csv = (images / "metadata.csv").read_bytes()
    assert page_csv == (by_cli / "metadata.csv").read_bytes()
    _, rows = read_metadata(images / "metadata.csv")
    names = [r["file_name"] for r in rows]
    assert names == [f"img_{i:03d}.png" for i in range(4)]
    # the judge: transformers' generate asked the page's task, not the default one
    assert [r["text"] for r in rows] == generated(tiny_florence2, images, names, TASK)
    assert [r["text"] for r in rows] != generated(
        tiny_florence2, images, names, "<DETAILED_CAPTION>"
    )


def test_an_unknown_option_or_bad_value_is_a_400_with_the_clis_line(client, images, capsys):
    before = (images / "metadata.csv").read_bytes()
    for options, cli_option in (
        ({"modle": "x"}, "modle=x"),
        ({"max_new_tokens": "0"}, "max_new_tokens=0"),
        ({"prompt": "<OD>"}, "prompt=<OD>"),
    ):
        answer = client.post(
            "/api/label",
            json={"data_dir": str(images), "labeler": "florence2", "options": options},
        )
        assert answer.status_code == 400, options
        line = answer.json()["error"]
        assert "\n" not in line and line.startswith("labeler florence2"), line
        code, _, err = run_cli(capsys, "label", images, "-l", "florence2", "-o", cli_option)
        assert code == 2 and err.strip() == f"lorakit: error: {line}", (err, line)
    assert (
        "did you mean model?"
        in client.post(
            "/api/label",
            json={"data_dir": str(images), "labeler": "florence2", "options": {"modle": "x"}},
        ).json()["error"]
    )
    refused = {
        "a key that is no name": {"options": {"model=x --overwrite": "y"}},
        "a value too long": {"options": {"prompt": "a" * 5000}},
        "options not an object": {"options": ["model=x"]},
        "a NUL": {"prefix": "a\x00b"},
        "a bad batch size": {"batch_size": "-1"},
        "an unknown labeler": {"labeler": "nope"},
    }
    for case, more in refused.items():
        body = {"data_dir": str(images), "labeler": "florence2", **more}
        answer = client.post("/api/label", json=body)
        assert answer.status_code == 400, case
        assert "\n" not in answer.json()["error"], case
    assert (images / "metadata.csv").read_bytes() == before  # nothing ran


def test_an_option_value_starting_with_a_dash_stays_a_value(client, images):
    from lorakit_ui.api_labels import label_command

    (images / "metadata.csv").unlink()
    for i in range(4):  # sidecar captions in files named img_00i.--dry-run
        (images / f"img_{i:03d}.--dry-run").write_text(f"caption {i}")
    body = {
        "data_dir": str(images),
        "labeler": "sidecar",
        "prefix": "--help",
        "options": {"extension": "--dry-run"},
    }
    command = label_command(body)
    assert "--dry-run" not in command and "--help" not in command
    answer = client.post("/api/label", json=body).json()
    assert answer["ok"], answer
    _, rows = read_metadata(images / "metadata.csv")  # written: no dry run, no usage text
    assert [r["text"] for r in rows] == [f"--help, caption {i}" for i in range(4)]


@pytest.mark.slow
def test_the_page_lists_a_labelers_options_and_labels_with_them(tiny_florence2, images, tmp_path):
    """In Chromium: choosing florence2 lists its declared options; a local model, a task
    and max tokens typed there give the captions transformers generates for that task."""
    from test_browser import ARGS, CHROMIUM, until
    from ui_helpers import Server

    from lorakit.api import get_registries
    from lorakit.app import describe_options

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.sync_api")

    (images / "metadata.csv").unlink()
    declared = describe_options(get_registries().labelers.get("florence2"))
    server = Server(tmp_path / "runs")
    try:
        server.wait()
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{server.url}/?token={server.token}")
            page.goto(f"{server.url}/label?data_dir={images}")
            page.select_option("#labeler", "florence2")
            page.locator("[data-option=model]").wait_for()
            shown = page.eval_on_selector_all(
                "#labeler-options [data-option]",
                "els => els.map(e => [e.dataset.option, e.dataset.default])",
            )
            assert shown == [[o["name"], o["default"]] for o in declared]
            prompt = page.locator("[data-option=prompt]")
            assert prompt.get_attribute("placeholder") == "<DETAILED_CAPTION>"  # as text
            page.fill("[data-option=model]", str(tiny_florence2))
            page.fill("[data-option=prompt]", TASK)
            page.fill("[data-option=max_new_tokens]", "8")
            page.fill("#prefix", "sks")
            page.click("#label")
            until(page, "document.querySelectorAll('#metadata tbody tr').length === 4", 120)
            texts = page.eval_on_selector_all(
                "#metadata tbody textarea", "els => els.map(e => e.value)"
            )
            assert page.inner_text("#label-error") == ""
            browser.close()
    finally:
        server.stop()
    names = [f"img_{i:03d}.png" for i in range(4)]
    assert texts == generated(tiny_florence2, images, names, TASK)
