"""The new-run page as a studio: the template picker in plain words, the plan beside the
form (equal to ``lorakit plan --json``), the dataset view (what training reads, and a
caption edited there is what training reads), and the file browser (the person's folders
only, links never followed)."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ui_helpers import tiny_form


def body(values: dict[str, str], backend: str = "sd", **more: str) -> dict:
    return {"backend": backend, "template": "sd15", "values": values, **more}


def test_the_picker_offers_every_installed_template_in_plain_words(client):
    from lorakit.api import get_registries
    from lorakit.app import template_text

    page = client.get("/new").text
    for entry in get_registries().backends:
        for name in entry.spec.template_files():
            link = f'href="/new?backend={entry.spec.name}&amp;template={name}"'
            assert link in page, name
            # its words are the template's own first comment line
            card = page.split(link)[1].split("</a>")[0]
            shown = " ".join(html.unescape(re.sub("<[^>]+>", " ", card.split(">", 1)[1])).split())
            first = template_text(entry.spec.name, name).splitlines()[0]
            words = " ".join(re.sub(r"^# (lorakit[\w-]*: )?", "", first).split())
            same = [re.sub(r"[:,]", "", text)[:30] for text in (shown, words)]
            assert same[0] == same[1], (shown, words)
    assert "<h2>Images</h2>" in page and "<h2>Text</h2>" in page
    picked = client.get("/new?backend=llm&template=qlora").text
    assert 'data-template="qlora"' in picked and 'class="card chosen"' in picked
    chosen = picked.split('class="card chosen"')[1].split("</a>")[0]
    assert "QLoRA" in chosen and 'data-key="llm.max_seq_len"' in picked.split('id="advanced"')[0]


def test_the_plan_beside_the_form_is_lorakit_plan_json(client, runs_dir, tiny_sd, images):
    values = tiny_form(tiny_sd, images, runs_dir)
    saved = client.post("/api/save", json=body(values)).json()
    assert saved["ok"], saved
    cli = subprocess.Popen(  # at the same time as the page's plan: both take seconds
        [sys.executable, "-m", "lorakit.cli", "plan", "--config", saved["path"], "--json"]
        + ["--gpu", "8GB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    answer: dict = {}
    planning = threading.Thread(
        target=lambda: answer.update(client.post("/api/plan", json=body(values, gpu="8")).json())
    )
    planning.start()
    times = []
    while planning.is_alive() and len(times) < 3:  # the plan holds no request of the page
        start = time.monotonic()
        assert client.get("/api/runs").status_code == 200
        times.append(time.monotonic() - start)
        time.sleep(0.2)
    planning.join(300)
    assert times and max(times) < 1.0, times
    shown = answer
    out, _ = cli.communicate(timeout=300)
    assert shown["ok"], shown
    assert shown["plan"] == json.loads(out)
    plan = shown["plan"]
    assert plan["fits"] is True and plan["card"] == {"name": "8 GiB", "gib": 8.0}
    assert plan["bytes"]["activations_other_checkpointing"] is not None  # both traced, as the CLI

    # an invalid form: its error beside its field, no plan; a card it cannot read: beside gpu
    wrong = client.post("/api/plan", json=body({**values, "lora_rank": "0"}, gpu="8")).json()
    assert wrong["ok"] is False and wrong["key"] == "lora_rank" and "plan" not in wrong
    assert "greater than 0" in wrong["error"]
    card = client.post("/api/plan", json=body(values, gpu="a toaster")).json()
    assert card["ok"] is False and card["key"] == "gpu" and "a toaster" in card["error"]


def test_a_plan_that_takes_too_long_ends_its_worker_and_says_so(tmp_path):
    from lorakit_ui.planner import PlanWorker

    worker = PlanWorker(timeout=0.01)  # the worker cannot even import lorakit in time
    try:
        answer = worker.plan("backend: sd\n", tmp_path / "x.yaml", "")
        assert answer == {
            "ok": False,
            "error": "the plan took longer than 0.01 s and was stopped",
        }
        assert worker._process is None  # ended; the next plan starts a fresh one
    finally:
        worker.shutdown()


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    from PIL import Image

    Image.new("RGB", size, color).save(path)


def test_the_dataset_view_shows_what_training_reads_and_saves_what_it_will_read(
    client, runs_dir, tiny_sd, images
):
    from lorakit.api import get_registries

    (images / "img_003.png").write_bytes((images / "img_000.png").read_bytes())  # duplicate
    _png(images / "img_004.png", (12, 12), (0, 0, 255))  # enlarged 2.7x to its bucket
    _png(images / "img_005.png", (64, 32), (0, 255, 0))  # a wide one
    (images / "img_006.png").write_bytes(b"not a png")
    with open(images / "metadata.csv", "a") as f:
        f.write("\nimg_004.png,a blue square\nimg_005.png,\nimg_006.png,broken\n")
    values = tiny_form(tiny_sd, images, runs_dir)
    view = client.post("/api/dataset", json=body(values)).json()
    assert view["ok"], view
    assert view["kind"] == "images" and view["format"] == "metadata_csv" and view["total"] == 7
    assert view["editable"] == [str(images)] and view["resolution"] == 32
    notes = {row["name"]: row["notes"] for row in view["rows"]}
    assert notes["img_000.png"] == [] and notes["img_001.png"] == []
    assert notes["img_003.png"] == ["duplicate: the same bytes as img_000.png"]
    assert notes["img_004.png"] == ["small: 12x12 is enlarged 2.7x to its bucket"]
    assert notes["img_005.png"] == ["img_005.png: missing caption"]
    assert len(notes["img_006.png"]) == 1 and notes["img_006.png"][0].startswith("unreadable")
    # buckets: the sd backend's own (bucket_sizes, nearest_bucket) at sd.resolution 32
    from lorakit_sd.data.buckets import bucket_sizes, nearest_bucket

    wide = nearest_bucket((64, 32), bucket_sizes(32, 8))
    assert view["buckets"] == {"32x32": 3}  # rows with a problem are not counted
    assert [r["bucket"] for r in view["rows"] if r["name"] == "img_005.png"] == [list(wide)]

    # a caption edited in the view is saved by the one writer, and training's reader reads it
    table = client.get("/api/metadata", params={"data_dir": str(images)}).json()
    for row in table["rows"]:
        if row["file_name"] == "img_005.png":
            row["text"] = "a green, wide rectangle"
    saved = client.post("/api/metadata", json={**table, "data_dir": str(images)}).json()
    assert saved["ok"], saved
    reader = get_registries().dataset_readers.get("metadata_csv")
    records = {Path(r["image"]).name: r for r in reader.factory(images)}
    assert records["img_005.png"]["caption"] == "a green, wide rectangle"
    again = client.post("/api/dataset", json=body(values)).json()
    fixed = next(r for r in again["rows"] if r["name"] == "img_005.png")
    assert fixed["text"] == "a green, wide rectangle" and fixed["notes"] == []

    missing = client.post(
        "/api/dataset", json=body({**values, "train_data_dir": str(images / "nope")})
    ).json()
    assert missing["ok"] is False and "nope" in missing["error"]


def test_the_dataset_view_reads_no_link_and_opens_no_fifo(client, runs_dir, tiny_sd, images):
    secret = images.parent / "secret.png"
    _png(secret, (32, 32), (9, 9, 9))
    (images / "link.png").symlink_to(secret)
    os.mkfifo(images / "fifo.png")
    with open(images / "metadata.csv", "a") as f:
        f.write("\nlink.png,a link\nfifo.png,a fifo\n")
    values = tiny_form(tiny_sd, images, runs_dir)
    view = client.post("/api/dataset", json=body(values)).json()
    notes = {row["name"]: row for row in view["rows"]}
    [refused] = notes["link.png"]["notes"]  # training's own reader refuses it too
    assert refused.startswith("link.png: a link that leaves the data folder")
    assert notes["link.png"]["size"] is None  # not decoded
    assert notes["fifo.png"]["notes"] == ["fifo.png: image not found"]
    served = client.get("/api/image", params={"data_dir": str(images), "name": "link.png"})
    assert served.status_code == 404


def test_the_dataset_view_of_a_text_file_renders_rows_through_the_chat_template(
    client, runs_dir, tmp_path
):
    from lorakit_llm.testing import build_tiny_llama, write_qa_jsonl
    from transformers import AutoTokenizer

    model = build_tiny_llama(tmp_path / "llama")
    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=6)
    long_row = {"question": "why " * 300, "answer": "because"}
    with open(data, "a") as f:
        f.write(json.dumps(long_row) + "\n")
    values = {
        "base_model": str(model),
        "train_data_dir": str(data),
        "output_dir": str(runs_dir / "text"),
        "llm.max_seq_len": "256",
    }
    view = client.post("/api/dataset", json={"backend": "llm", "values": values}).json()
    assert view["ok"], view
    assert view["kind"] == "text" and view["format"] == "qa" and view["total"] == 7
    tokenizer = AutoTokenizer.from_pretrained(model)
    first = json.loads(data.read_text().splitlines()[0])
    messages = [
        {"role": "user", "content": first["question"]},
        {"role": "assistant", "content": first["answer"]},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=tokenizer.chat_template, tokenize=False
    )
    row = view["rows"][0]
    assert row["name"].endswith("qa.jsonl:1") and row["text"] == rendered
    assert row["tokens"] == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    longest = max(view["rows"], key=lambda r: r["tokens"])
    assert longest["name"].endswith(":7") and longest["tokens"] > 256
    assert longest["notes"] == [f"{longest['tokens']} tokens: cut to llm.max_seq_len 256"]


def test_the_file_browser_shows_only_the_persons_folders_and_never_follows_links(
    runs_dir, tmp_path
):
    from lorakit_ui.server import create_app
    from starlette.testclient import TestClient
    from ui_helpers import ORIGIN, TOKEN

    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "model.safetensors").write_bytes(b"x")
    (mine / ".hidden").write_text("x")
    (mine / "pic.png").write_bytes(b"x")
    os.mkfifo(mine / "fifo")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (mine / "out").symlink_to(elsewhere)
    app = create_app(runs_dir, token=TOKEN, port=7860, folders=(mine,))
    with TestClient(app, base_url=ORIGIN) as client:
        client.cookies.set("lorakit_ui_token_7860", TOKEN)
        roots = client.get("/api/browse").json()["roots"]
        assert str(mine) in roots and str(runs_dir.parent) in roots
        assert str(Path(os.path.realpath(Path.home()))) in roots
        listed = client.get("/api/browse", params={"path": str(mine)}).json()
        kinds = {e["name"]: e["kind"] for e in listed["entries"]}
        assert kinds == {"data": "dir", "model.safetensors": "file", "pic.png": "image"} | {
            "out": "link"
        }
        assert listed["entries"][0]["name"] == "data"  # folders first
        through = client.get("/api/browse", params={"path": str(mine / "out")})
        assert through.status_code == 403 and "link" in through.json()["error"]
        assert os.listdir(elsewhere) == []  # nothing read there
        for outside in ("/", str(elsewhere), str(mine / ".." / ".." / "..")):
            if any(Path(outside).resolve() == Path(r) for r in roots):
                continue
            refused = client.get("/api/browse", params={"path": outside})
            assert refused.status_code == 403, outside
            assert "outside the folders this page shows" in refused.json()["error"]
        assert client.get("/api/browse", params={"path": "x\x00y"}).status_code == 400


@pytest.mark.parametrize("steps,total,live", [(3, 12, True), (12, 12, False)])
def test_the_runs_list_carries_what_progress_and_eta_need(client, runs_dir, steps, total, live):
    from test_routes import fake_run

    fake_run(runs_dir, "r", "running" if live else "finished", [1.0] * steps, total_steps=total)
    [run] = client.get("/api/runs").json()["runs"]
    assert (run["steps"], run["total_steps"]) == (steps, total)
    assert run["elapsed_s"] is not None and run["status"] == ("running" if live else "finished")
