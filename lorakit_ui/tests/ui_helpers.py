"""Helpers shared by lorakit-ui's tests: form values for a tiny SD run, a live server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

#: The token and origin of the in-process test app (conftest's ``client``).
TOKEN = "test-token"
ORIGIN = "http://127.0.0.1:7860"


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


def _cap_memory(limit: int) -> None:
    """In the server's process: a memory bomb fails there, not on the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Server:
    """``lorakit ui`` in a subprocess, as a user starts it."""

    def __init__(
        self, runs: Path, *args: str, host: str = "127.0.0.1", memory_limit: int | None = None
    ) -> None:
        self.port = free_port()
        self.log = runs.parent / f"ui-{self.port}.log"
        runs.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "lorakit.cli", "ui", "--port", str(self.port)]
        command += ["--runs-dir", str(runs), "--host", host, *args]
        self.handle = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=None if memory_limit is None else lambda: _cap_memory(memory_limit),
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""

    def wait(self, timeout: float = 60.0) -> None:
        """Until it answers; ``token`` is then the one of the URL it printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lorakit ui exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            found = re.search(r"\?token=(\S+)", self.output())
            if found:
                self.token = found.group(1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"lorakit ui did not start: {self.output()}")

    @property
    def cookie(self) -> str:
        return f"lorakit_ui_token_{self.port}={self.token}"

    def request(
        self, method: str, path: str, body: Any = None, *, login: bool = True, **headers: str
    ) -> tuple[int, str]:
        """A request as the page sends it (its Origin, JSON, the cookie), unless told."""
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Origin": self.url, **({"Content-Type": "application/json"} if data else {})}
        if login:
            sent["Cookie"] = self.cookie
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get(self, path: str, *, login: bool = True) -> tuple[int, str]:
        return self.request("GET", path, login=login)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, text = self.request("POST", path, body)
        return status, json.loads(text)

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
