"""Crashes lose nothing: SIGKILL at random moments, resume, same LoRA bit for bit."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lorakit.engine.checkpoint import checkpoint_dirs
from lorakit.errors import RunError
from lorakit.io import atomic_dir, save_safetensors, write_text

LORAKIT = [sys.executable, "-m", "lorakit.cli"]


def write_config(tmp_path: Path, name: str, save_steps: int) -> Path:
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"task_type: toy-regression\nbase_model: toy/mlp\ntrain_data_dir: {tmp_path}\n"
        f"output_dir: {tmp_path / name}\nlora_rank: 4\nbatch_size: 8\nmax_steps: 30\n"
        f"learning_rate: 1e-2\nlr_scheduler: cosine\nsave_steps: {save_steps}\n"
        f"save_total_limit: 2\ntrackers: [jsonl]\ntoy:\n  slow_ms: 40\n"
    )
    return config


def last_step(output_dir: Path) -> int:
    try:
        lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return len(lines)


def run_killed(config: Path, output_dir: Path, env: dict, rng: random.Random, kills: int) -> int:
    """Run, SIGKILL at a random moment, resume; repeat; then finish. Returns kills done."""
    done = 0
    for _ in range(kills):
        resume = ["--resume"] if checkpoint_dirs(output_dir) else []
        proc = subprocess.Popen(
            [*LORAKIT, "train", "--config", str(config), *resume],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        start = last_step(output_dir)
        target = start + rng.randint(2, 8)
        deadline = time.time() + 120
        while proc.poll() is None and last_step(output_dir) < target and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.random() * 0.05)  # land anywhere: mid-step, mid-checkpoint
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            done += 1
        proc.wait()
        for folder in checkpoint_dirs(output_dir):  # every visible checkpoint is whole
            assert {p.name for p in folder.iterdir()} >= {
                "lora.safetensors",
                "optimizer.safetensors",
                "optimizer.json",
                "scheduler.json",
                "rng.safetensors",
                "rng.json",
                "trainer_state.json",
            }
    resume = ["--resume"] if checkpoint_dirs(output_dir) else []
    final = subprocess.run(
        [*LORAKIT, "train", "--config", str(config), *resume],
        env=env,
        capture_output=True,
        text=True,
    )
    assert final.returncode == 0, final.stderr
    return done


@pytest.mark.slow
@pytest.mark.parametrize(
    "save_steps", [3, 1], ids=["between-checkpoints", "during-checkpoint-writes"]
)
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, toy_env, save_steps):
    whole_cfg = write_config(tmp_path, "whole", save_steps)
    subprocess.run(
        [*LORAKIT, "train", "--config", str(whole_cfg)],
        env=toy_env,
        check=True,
        capture_output=True,
    )
    killed_cfg = write_config(tmp_path, "killed", save_steps)
    kills = run_killed(killed_cfg, tmp_path / "killed", toy_env, random.Random(save_steps), kills=3)
    assert kills >= 2
    a = load_file(str(tmp_path / "whole" / "whole.lorakit.safetensors"))
    b = load_file(str(tmp_path / "killed" / "killed.lorakit.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
    rows_a = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 30
    strip = lambda rows: [r.split('"samples_per_s"')[0] for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "lora.safetensors"
    save_safetensors({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    monkeypatch.setattr("safetensors.torch.save_file", _full_disk)
    with pytest.raises(RunError, match="disk full while writing .*lora.safetensors"):
        save_safetensors({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # no temp files left


def test_full_disk_during_text_and_folder_writes(tmp_path, monkeypatch):
    write_text(tmp_path / "run.json", "old")
    folder = tmp_path / "adapter"
    with atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("v1")
    real_replace = os.replace

    def fail_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(RunError, match="disk full"):
        write_text(tmp_path / "run.json", "new")
    with pytest.raises(RunError, match="disk full"), atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("v2")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "run.json").read_text() == "old"
    assert (folder / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "run.json"]


def test_a_kill_while_pruning_leaves_no_partial_checkpoint_visible(tmp_path, monkeypatch):
    import shutil

    from lorakit.engine import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        folder = root / f"step-{step}"
        folder.mkdir(parents=True)
        for name in ("lora.safetensors", "optimizer.json", "trainer_state.json"):
            (folder / name).write_text("x")

    def killed_midway(path, ignore_errors=False):
        next(p for p in sorted(Path(path).iterdir()) if p.name != "trainer_state.json").unlink()
        raise KeyboardInterrupt  # the process dies here, mid-deletion

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(tmp_path, keep=2)
    monkeypatch.undo()
    visible = ckpt.checkpoint_dirs(tmp_path)
    assert [p.name for p in visible] == ["step-2", "step-3"]
    assert all(len(list(p.iterdir())) == 3 for p in visible)
    ckpt.prune_checkpoints(tmp_path, keep=2)  # the next save clears the leftover
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]
