"""Helpers shared by lorakit-ui's tests: form values for a tiny SD run, a live server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def tiny_form(
    model: Any, data: Path, runs: Path, name: str = "tiny", **more: str
) -> dict[str, str]:
    """Form values (key → text, as typed into the page) for a few-second tiny SD run."""
    values = {
        "config_path": str(runs / f"{name}.yaml"),
        "base_model": str(model.diffusers_dir),
        "train_data_dir": str(data),
        "output_dir": str(runs / name),
        "lora_rank": "4",
        "lora_alpha": "4",
        "batch_size": "2",
        "max_steps": "6",
        "learning_rate": "1e-3",
        "lr_warmup_steps": "0",
        "mixed_precision": "no",
        "gradient_checkpointing": "false",
        "save_steps": "0",
        "trackers": "[jsonl]",
        "sd.resolution": "32",
        "sd.bucket_step": "8",
        "sd.sample_steps": "2",
    }
    values.update(more)
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``lorakit ui`` in a subprocess, as a user starts it."""

    def __init__(self, runs: Path, *args: str, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.log = runs.parent / f"ui-{self.port}.log"
        runs.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "lorakit.cli", "ui", "--port", str(self.port)]
        command += ["--runs-dir", str(runs), "--host", host, *args]
        self.handle = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self.handle, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lorakit ui exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"lorakit ui did not start: {self.output()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def output(self) -> str:
        self.handle.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.handle.close()
