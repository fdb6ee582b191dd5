"""Trying a finished run (chat, sample) and comparing runs, through the real server
(``lorakit ui`` in a subprocess): the chat panel answers what ``lorakit chat`` answers, a
sample has ``lorakit sample``'s pixels, the queue runs one request at a time and refuses
past its bound, and hostile run folders are refused in one line."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import Server

from lorakit.api import printable
from lorakit.testing import run_cli


@pytest.fixture(scope="module")
def server(finished_runs: dict[str, Any]) -> Any:
    server = Server(finished_runs["runs"])
    try:
        server.wait()
        yield server
    finally:
        server.stop()


def finish(server: Server, answer: dict[str, Any], timeout: float = 240.0) -> dict[str, Any]:
    """Poll a queued request until it is done or failed."""
    assert answer.get("ok"), answer
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, text = server.get(f"/api/try-jobs/{answer['id']}")
        state = json.loads(text)
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"request {answer['id']} did not finish")


def pixels(data: bytes) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def cli_chat(capsys: Any, base: Path, prompt: str, *adapter: Path) -> str:
    args = [a for path in adapter for a in ("--adapter", str(path))]
    code, out, err = run_cli(
        capsys, "chat", "--base", base, *args, "--prompt", prompt, "--max-new-tokens", "16"
    )
    assert code == 0, err
    return out.rstrip("\n")


PROMPT = "What is the capital of France?"


def test_the_chat_panel_answers_as_lorakit_chat_with_the_adapter_on_and_off(
    server, finished_runs, capsys
):
    runs, base = finished_runs["runs"], finished_runs["llama"]
    status, info = server.get("/api/try/chat")
    info = json.loads(info)
    assert info["kind"] == "chat" and info["final"] and info["checkpoints"] == ["step-10", "step-5"]
    body = {"prompt": PROMPT, "on": [], "off": [], "max_new_tokens": 16}
    first = finish(server, server.post("/api/try/chat/chat", body)[1])
    assert first["state"] == "done", first
    on, off = first["result"]["on"], first["result"]["off"]
    assert printable(on, newlines=True) == cli_chat(capsys, base, PROMPT, runs / "chat")
    assert printable(off, newlines=True) == cli_chat(capsys, base, PROMPT)
    assert on != off  # the adapter changes the answer
    # a second turn continues each side's own conversation
    history = {
        side: [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": answer}]
        for side, answer in (("on", on), ("off", off))
    }
    second = finish(server, server.post("/api/try/chat/chat", {**body, **history})[1])
    assert second["state"] == "done" and isinstance(second["result"]["on"], str)
    # a checkpoint: its own adapter, as lorakit chat reads it from the checkpoint folder
    early = finish(server, server.post("/api/try/chat/chat", {**body, "checkpoint": "step-5"})[1])
    adapter = runs / "chat" / "checkpoints" / "step-5" / "adapter"
    assert printable(early["result"]["on"], newlines=True) == cli_chat(
        capsys, base, PROMPT, adapter
    )


def test_a_sample_has_the_pixels_of_lorakit_sample(server, finished_runs, capsys, tmp_path):
    import numpy as np

    run = finished_runs["runs"] / "sd-a"
    info = json.loads(server.get("/api/try/sd-a")[1])
    assert info["kind"] == "sample" and info["prompts"] == finished_runs["prompts"]
    assert info["checkpoints"] == ["step-4", "step-2"]
    body = {"prompt": "a red circle", "weight": 0.7, "seed": 3, "steps": 2}
    images = {}
    for source, lora in (("", run / "sd-a.safetensors"), ("step-2", None)):
        lora = lora or run / "checkpoints" / source / "sd-a.safetensors"
        done = finish(
            server, server.post("/api/try/sd-a/sample", {**body, "checkpoint": source})[1]
        )
        assert done["state"] == "done", done
        shown = server_bytes(server, f"/api/try-jobs/{done['id']}/image")
        out = tmp_path / (source or "final")
        code, _, err = run_cli(
            capsys,
            "sample",
            "--config",
            run / "config.yaml",
            "--lora",
            f"{lora}:0.7",
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
        expected = pixels((out / "sd-a-00.png").read_bytes())
        images[source] = pixels(shown)
        assert images[source].shape == expected.shape
        assert np.array_equal(images[source], expected), source
    assert not np.array_equal(images[""], images["step-2"])  # another LoRA, other pixels


def server_bytes(server: Server, path: str) -> bytes:
    import urllib.request

    request = urllib.request.Request(server.url + path, headers={"Cookie": server.cookie})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def test_one_request_at_a_time_and_a_full_queue_is_one_line(server):
    body = {"prompt": "a red circle", "seed": 1, "steps": 1}
    answers = [server.post("/api/try/sd-a/sample", body) for _ in range(5)]
    queued = [a for status, a in answers if status == 200]
    refused = [a for status, a in answers if status == 429]
    assert len(queued) == 3 and len(refused) == 2, answers
    assert refused[0]["error"].startswith("busy: 3 requests ahead (one render or answer at a time")
    assert [a["ahead"] for a in queued] == [0, 1, 2]
    # never two at once: each starts when the one before it has finished
    done = [finish(server, a) for a in queued]
    assert all(d["state"] == "done" for d in done)
    for before, after in zip(done, done[1:], strict=False):
        assert after["started_at"] >= before["finished_at"]


def test_the_worker_is_stopped_at_the_time_limit():
    from lorakit_ui.tryout import TryQueue

    tryout = TryQueue(timeout=0.2, capacity=1)
    try:
        job = tryout.submit("x", {"kind": "sample", "run": "/nonexistent", "folder": ""})
        with pytest.raises(Exception, match=r"^busy: 1 requests ahead"):
            tryout.submit("x", {})
        deadline = time.monotonic() + 30
        while tryout.status(job.id)["state"] in ("queued", "running"):  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = tryout.status(job.id)
        assert status["error"] == "stopped after 0.2 s, the page's limit for one request"  # type: ignore[index]
        assert tryout._process is None  # killed, with its process group
    finally:
        tryout.shutdown()
    assert not tryout.scratch.exists()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"prompt": ""}, "prompt: type something to send"),
        ({"prompt": "x" * 2001}, "prompt: at most 2000 characters (got 2001)"),
        ({"prompt": "x", "weight": 9}, "weight: a number from -4 to 4 (got '9')"),
        ({"prompt": "x", "seed": -1}, "seed: a number from 0 to 4294967295 (got '-1')"),
        ({"prompt": "x", "steps": "1e9"}, "steps: a number from 1 to 200 (got '1e9')"),
        ({"prompt": "x", "weight": "nan"}, "weight: a number from -4 to 4 (got 'nan')"),
    ],
)
def test_out_of_bounds_values_are_one_line(server, body, said):
    status, answer = server.post("/api/try/sd-a/sample", body)
    assert (status, answer["error"]) == (400, said)


def test_what_cannot_be_tried_is_refused_in_one_line(server, finished_runs):
    runs = finished_runs["runs"]
    status, answer = server.post("/api/try/sd-a/sample", {"prompt": "x", "checkpoint": "../../x"})
    assert (status, answer["error"]) == (409, "run sd-a has no checkpoint '../../x'")
    status, answer = server.post("/api/try/sd-a/chat", {"prompt": "x"})
    assert (status, answer["error"]) == (409, "run sd-a has no chat panel: sample only")
    # a run folder from elsewhere whose adapter is a link to another run's: not followed
    evil = runs / "evil-link"
    evil.mkdir()
    for name in ("run.json", "config.yaml"):
        (evil / name).write_bytes((runs / "chat" / name).read_bytes())
    os.symlink(runs / "chat" / "adapter", evil / "adapter")
    try:
        done = finish(server, server.post("/api/try/evil-link/chat", {"prompt": "x"})[1])
        assert done["state"] == "failed"
        assert done["error"] == (
            f"{evil}: the finished run holds no LoRA that backend llm reads"
        ), done
    finally:
        (evil / "adapter").unlink()
        for name in ("run.json", "config.yaml"):
            (evil / name).unlink()
        evil.rmdir()


# -- comparing runs --------------------------------------------------------------------------


def test_compare_overlays_curves_lists_differing_keys_and_grids_samples(server, finished_runs):
    runs = finished_runs["runs"]
    status, text = server.get("/api/compare?run=sd-a&run=sd-b")
    assert status == 200, text
    data = json.loads(text)
    assert [r["name"] for r in data["runs"]] == ["sd-a", "sd-b"]
    assert data["config"] == [
        {"key": "learning_rate", "values": ["0.001", "0.005"]},
        {"key": "lora_rank", "values": ["4", "2"]},
    ]
    for run in data["runs"]:
        rows = [json.loads(line) for line in (runs / run["name"] / "metrics.jsonl").open()]
        assert run["curves"]["loss"] == [[r["step"], r["elapsed_s"], r["loss"]] for r in rows]
        grid = run["samples"]
        assert grid["steps"] == [2, 4] and grid["prompts"] == finished_runs["prompts"]
        assert grid["cells"][1][0] == "samples/step-000004-00.png"
        served = server_bytes(server, f"/runs/{run['name']}/files/{grid['cells'][1][0]}")
        assert served == (runs / run["name"] / grid["cells"][1][0]).read_bytes()
    status, text = server.get("/api/compare?run=sd-a&run=nope")
    assert status == 404 and json.loads(text)["error"] == "no run named nope"


def test_compare_of_hostile_run_folders(client, runs_dir, tmp_path):
    """Values are sent as JSON text; a sample that is a link and bad metric rows are left out."""
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not yours")
    for name, rate in (("x", "<img src=x onerror=alert(1)>"), ("y", 0.1)):
        run = runs_dir / name
        (run / "samples").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"status": "finished", "backend": "sd"}))
        (run / "config.yaml").write_text(f"learning_rate: {json.dumps(rate)}\nsd: {{a: 1}}\n")
        (run / "metrics.jsonl").write_text(
            '{"step": 1, "loss": "<b>", "elapsed_s": 1}\n{"step": 2, "loss": 0.5}\n'
        )
        os.symlink(outside, run / "samples" / "step-000001-00.png")
    data = client.get("/api/compare?run=x&run=y").json()
    assert data["config"] == [
        {"key": "learning_rate", "values": ['"<img src=x onerror=alert(1)>"', "0.1"]}
    ]
    assert data["runs"][0]["curves"]["loss"] == [[2.0, 2.0, 0.5]]
    assert data["runs"][0]["samples"]["steps"] == []
    assert client.get("/api/compare").json()["error"] == "compare 1 to 8 runs (got 0)"


def test_starting_a_training_stops_the_idle_worker(tmp_path):
    """A model the worker holds leaves memory before a training starts from the page."""
    from lorakit_ui.runs import RunManager
    from lorakit_ui.tryout import TryQueue

    tryout = TryQueue(timeout=120)
    runs = RunManager(tmp_path / "runs")
    runs.before_start = tryout.release
    try:
        (tmp_path / "empty").mkdir()
        job = tryout.submit("x", {"kind": "sample", "run": str(tmp_path / "empty"), "folder": ""})
        deadline = time.monotonic() + 120
        while tryout.status(job.id)["state"] != "failed":  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        error = tryout.status(job.id)["error"]  # type: ignore[index]
        assert error == f"{tmp_path / 'empty' / 'config.yaml'} is missing"
        worker = tryout._process
        assert worker is not None and worker.poll() is None  # still loaded, waiting
        config = tmp_path / "c.yaml"
        config.write_text("base_model: nowhere\n")
        name = runs.start(config, tmp_path / "runs" / "r")
        assert tryout._process is None and worker.poll() is not None
        runs.jobs[name].process.wait(60)
    finally:
        tryout.shutdown()


@pytest.mark.parametrize(
    "path",
    [
        "/api/try/a%00b",
        "/api/try/" + "x" * 300,
        "/api/compare?run=a%00b",
        "/api/compare?" + "&".join(f"run=r{i}" for i in range(9)),
        "/api/try-jobs/" + "9" * 30,
        "/api/try-jobs/-1/image",
    ],
)
def test_nul_bytes_long_names_and_unknown_requests_are_4xx(client, path):
    answer = client.get(path)
    assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_a_link_in_place_of_a_runs_record_or_config_shows_nothing_of_its_target(
    client, runs_dir, tmp_path
):
    secret = tmp_path / "secret.yaml"
    secret.write_text("learning_rate: SECRET\nsample_prompts: [SECRET]\n")
    run = runs_dir / "linked"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "finished", "backend": "sd"}))
    (run / "config.yaml").symlink_to(secret)
    assert "SECRET" not in client.get("/api/compare?run=linked").text
    assert "SECRET" not in client.get("/api/try/linked").text
    (run / "run.json").unlink()
    (run / "run.json").symlink_to(tmp_path / "secret.yaml")
    info = client.get("/api/try/linked").json()
    assert info["kind"] is None and "SECRET" not in json.dumps(info)
