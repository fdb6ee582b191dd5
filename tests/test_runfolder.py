"""A run folder from a stranger: links inside it or at its top are never written through,
the lock records its command as data, dead writers' temporary files are cleaned up, a full
disk is one line, and only the RunFolder module names a run's files."""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import toy_config

from lorakit.errors import RunError
from lorakit.runfolder import LOCK, METRICS, RECORD, RunFolder
from lorakit.testing import run_cli, write_config

ROOT = Path(__file__).parent.parent


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", [METRICS, RECORD, LOCK])
def test_resuming_a_run_folder_with_a_link_to_a_file_outside_leaves_that_file_untouched(
    tmp_path, toy_plugins, capsys, name
):
    cfg = write_config(tmp_path / "a.yaml", toy_config(tmp_path, max_steps=2, save_steps=0))
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    victim = tmp_path / "victim"
    victim.write_text("export PATH=/usr/bin\n")
    out = tmp_path / "run"
    (out / name).unlink(missing_ok=True)
    (out / name).symlink_to("../victim")  # what a shared run folder may hold
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume")
    assert code == 2
    line = _one_line(err)
    assert f"{out / name} is a symbolic link" in line, line
    assert victim.read_text() == "export PATH=/usr/bin\n"
    assert (out / name).is_symlink()  # refused before anything was written


def test_an_output_dir_that_is_a_link_is_refused_unless_the_flag_says_so(
    tmp_path, toy_plugins, capsys
):
    target = tmp_path / "elsewhere"
    target.mkdir()
    out = tmp_path / "run"
    out.symlink_to(target)
    cfg = write_config(tmp_path / "a.yaml", toy_config(tmp_path, max_steps=2, save_steps=0))
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    assert "--follow-output-link" in _one_line(err) and f"output_dir {out}" in err
    assert list(target.iterdir()) == []
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--follow-output-link")
    assert code == 0, err
    assert json.loads((target / RECORD).read_text())["status"] == "finished"


def test_the_lock_records_the_command_as_a_json_list_not_shell_text(tmp_path, monkeypatch):
    from lorakit.engine.runlock import RunLock, holder

    argv = ["lorakit", "train", "--config", "run$(touch pwned).yaml", "--set", "a=`id`"]
    monkeypatch.setattr(sys, "argv", argv)
    lock = RunLock(tmp_path / "run").acquire()
    try:
        record = json.loads((tmp_path / "run" / LOCK).read_text())
        assert record["command"] == argv
        found = holder(tmp_path / "run")
        assert found is not None and found.command == tuple(argv)
    finally:
        lock.release()


WRITER = """
import sys, time
from lorakit.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(120)
"""


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_writer(tmp_path):
    from lorakit.io import write_text

    target = tmp_path / "lora.safetensors"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)  # as during a merge or an export
    writer.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".lora.safetensors.") and left[0].endswith(".tmp")
    write_text(target, "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]
    # the run folder's own writer cleans up the same way
    (tmp_path / f".{RECORD}.{writer.pid}-dead.tmp").write_text("{")
    RunFolder(tmp_path).write_json(RECORD, {"status": "finished"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", RECORD]


def test_a_full_disk_while_writing_a_run_file_keeps_the_previous_one(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.write_json(RECORD, {"status": "running"})

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(RunError) as failed:
        run.write_json(RECORD, {"status": "finished"})
    monkeypatch.undo()
    assert str(failed.value) == (
        f"disk full while writing {tmp_path / RECORD}; the previous file is intact"
    )
    assert json.loads((tmp_path / RECORD).read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == [RECORD]


def test_reads_refuse_fifos_devices_and_links_without_blocking(tmp_path):
    os.mkfifo(tmp_path / LOCK)
    (tmp_path / RECORD).symlink_to("/dev/zero")
    (tmp_path / METRICS).symlink_to("/etc/hostname")
    run = RunFolder(tmp_path)
    for name, what in ((LOCK, "a FIFO"), (RECORD, "a symbolic link"), (METRICS, "a symbolic")):
        with pytest.raises(Exception, match=what):
            run.read_bytes(name)
    assert run.try_json(RECORD) is None


RUN_FILE_NAMES = ("run.json", "metrics.jsonl", ".lorakit.lock", "trainer_state")


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and any(name in node.value for name in RUN_FILE_NAMES)
    ]


def test_only_the_run_folder_module_names_a_runs_files():
    sources = [
        *(ROOT / "lorakit").rglob("*.py"),
        *(ROOT / "lorakit_ui" / "src").rglob("*.py"),
        *(ROOT / "lorakit_llm" / "src").rglob("*.py"),
        *(ROOT / "lorakit_sd" / "src").rglob("*.py"),
    ]
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in sources
        if path.name != "runfolder.py"
        for line, text in _literals(path)
    ]
    assert found == []
