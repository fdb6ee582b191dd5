"""One writer per run folder: ``lorakit train`` holds an exclusive lock on output_dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import toy_config

from lorakit.engine.runlock import LOCK_NAME, RunLock, holder, holds_lock_here
from lorakit.testing import run_cli, write_config

HOLD = (
    "import sys, time\nfrom lorakit.engine.runlock import RunLock\n"
    "lock = RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n"
)


def test_a_second_train_is_refused_naming_the_pid_and_a_killed_holders_lock_is_taken_over(
    tmp_path, toy_plugins, capsys
):
    """The holder is a process that took the lock as ``lorakit train`` does (a real second
    trainer on a page-started run: lorakit_ui/tests/test_run_lock_page.py)."""
    cfg = write_config(tmp_path / "a.yaml", toy_config(tmp_path, max_steps=3, save_steps=0))
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        assert holder(out).pid == first.pid
        code, _, err = run_cli(capsys, "train", "--config", cfg)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"lorakit: error: output_dir {out} is in use by another training "
            f"(PID {first.pid}, since "
        )
        assert not (out / "run.json").exists()  # nothing written beside the holder
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed holder's file is still there, with its PID; the lock itself is free
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    assert holder(out) is None
    code, _, err = run_cli(capsys, "train", "--config", cfg)
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
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
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
