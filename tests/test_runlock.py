"""One writer per run folder: ``lorakit train`` holds an exclusive lock on output_dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import toy_config

from lorakit.engine.runlock import LOCK_NAME, RunLock, holder, holds_lock_here
from lorakit.testing import run_cli, write_config


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_train_is_refused_naming_the_pid_and_a_killed_trainers_lock_is_taken_over(
    tmp_path, toy_env, toy_plugins, capsys
):
    cfg = write_config(
        tmp_path / "a.yaml", toy_config(tmp_path, max_steps=400, slow_ms=50, save_steps=0)
    )
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "lorakit.cli", "train", "--config", str(cfg), "--no-progress"],
        env=toy_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists(), what="the first run's first step")
        assert holder(out).pid == first.pid
        code, _, err = run_cli(capsys, "train", "--config", cfg)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"lorakit: error: output_dir {out} is in use by another training "
            f"(PID {first.pid}, since "
        )
        for row in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(row)  # one writer: every line whole
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the dead trainer's file is still there, with its PID; the lock itself is free
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    assert holder(out) is None
    short = write_config(tmp_path / "b.yaml", toy_config(tmp_path, max_steps=3, save_steps=0))
    code, _, err = run_cli(capsys, "train", "--config", short)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_run_that_fails_before_it_begins_leaves_no_folder(tmp_path, toy_plugins, capsys):
    data = toy_config(tmp_path, max_steps=3, samples=0)
    cfg = write_config(tmp_path / "c.yaml", data)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and "empty" in err
    assert not (tmp_path / "run").exists()


def test_only_the_process_that_starts_a_launch_holds_the_lock():
    assert holds_lock_here({})
    assert not holds_lock_here({"LORAKIT_LAUNCHED": "1", "RANK": "0"})  # the launcher holds it
    assert holds_lock_here({"RANK": "0", "LOCAL_RANK": "0"})  # a hand-made accelerate launch
    assert not holds_lock_here({"RANK": "1", "LOCAL_RANK": "1"})


def test_the_lock_is_exclusive_between_processes(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time\nfrom lorakit.engine.runlock import RunLock\n"
        f"lock = RunLock({str(out)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"PID {other.pid}"):
            RunLock(out).acquire()
    finally:
        other.kill()
        other.wait()
    lock = RunLock(out).acquire()
    assert holder(out) is not None and holder(out).pid == os.getpid()
    lock.release()
    assert holder(out) is None and Path(out).is_dir()
