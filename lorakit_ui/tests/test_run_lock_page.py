"""Never two trainers on one run, and never losing track of one: the page and the CLI refuse
a second writer; after the server is SIGKILLed mid-run a new server shows the run as running
and stops it (checkpoint, exit); a refused Start changes no file; resume trains that run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ui_helpers import Server, tiny_form


def wait_for(predicate, timeout: float = 180.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def record(out) -> dict:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_second_writer_refused_server_killed_mid_run_restart_stop_and_resume(
    tiny_sd, images, tmp_path
):
    runs = tmp_path / "runs"
    out = runs / "a"
    server = Server(runs)
    later = None
    try:
        server.wait()
        values = tiny_form(
            tiny_sd,
            images,
            runs,
            name="a",
            max_steps="30",
            sample_every_n_steps="1",
            sample_prompts="[a red circle]",
        )
        body = {"backend": "sd", "template": "sd15", "values": values}
        status, started = server.post("/api/start", body)
        assert status == 200 and started["ok"], started
        wait_for(lambda: record(out).get("status") == "running", what="run a to begin")
        summary = json.loads(server.get("/api/runs/a")[1])
        pid = summary["pid"]
        config = runs / "a.yaml"
        saved = config.read_bytes()

        # a second `lorakit train` on the folder, from the CLI: one line naming the PID
        cli = subprocess.run(
            [sys.executable, "-m", "lorakit.cli", "train", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 2, cli.stderr
        assert cli.stderr.strip().count("\n") == 0
        assert f"is in use by another training (PID {pid}, since " in cli.stderr

        # from the page: refused before anything is written, the form's file unchanged
        other = {**values, "output_dir": str(runs / "b"), "lora_rank": "8"}
        refused = server.post("/api/start", {**body, "values": other})[1]
        assert refused["ok"] is False and "one run at a time" in refused["error"]
        assert config.read_bytes() == saved and not (runs / "b").exists()

        # the server dies; the trainer goes on; a new server sees it through the lock
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        later = Server(runs)
        later.wait()
        again = later.post("/api/start", body)[1]
        assert again["ok"] is False and f"PID {pid}" in again["error"]
        assert again["key"] == "output_dir"
        summary = json.loads(later.get("/api/runs/a")[1])
        assert summary["status"] == "running" and summary["can_stop"] and summary["pid"] == pid
        assert not summary["can_resume"]
        assert later.post("/api/runs/a/stop", {})[1]["ok"]
        wait_for(lambda: record(out).get("status") == "interrupted", what="the stop")
        wait_for(lambda: not _alive(pid), what="the trainer to exit")
        stopped = record(out)["steps"]
        assert (out / "checkpoints" / f"step-{stopped}").is_dir() and stopped < 30

        # resume (after the refused Start above): run a's own config.yaml, run a continues
        summary = json.loads(later.get("/api/runs/a")[1])
        assert summary["can_resume"], summary
        resumed = later.post("/api/runs/a/resume", {})[1]
        assert resumed["ok"], resumed
        # up to 28 steps with a preview each: minutes on a busy 2-core machine
        wait_for(
            lambda: record(out).get("status") == "finished", timeout=420, what="the resumed run"
        )
        done = record(out)
        assert done["steps"] == 30 and done["resumed_from"].endswith(f"step-{stopped}")
        assert f"--config {out / 'config.yaml'} " in later.get("/api/runs/a")[1]
        for row in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(row)  # one writer: every line whole
    finally:
        server.stop()
        if later is not None:
            later.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of the killed server is not a live trainer
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
