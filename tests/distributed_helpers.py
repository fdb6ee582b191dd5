"""What the two-process tests share: launching ``lorakit train``, reading what the ranks
wrote (tests/rank_probe.py), the rank probe installed as a plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

LORAKIT = [sys.executable, "-m", "lorakit.cli"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def train(path: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*LORAKIT, "train", "--config", str(path), *extra],
        env={**env, "LORAKIT_TEST_DUMP_RANKS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # ranks end through the interpreter's own teardown: nothing aborts there
    assert "terminate called" not in result.stderr, result.stderr[-3000:]
    return result


def install_probe(site: Path) -> dict[str, str]:
    """An environment in which the rank probe (tests/rank_probe.py) is an installed plugin
    beside sd and llm, found through its entry point as a third party's would be."""
    info = site / "lorakit_probe-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lorakit-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lorakit]\nprobe = rank_probe\n")
    tests = str(Path(__file__).parent)
    path = os.pathsep.join([str(site), tests, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "LORAKIT_TEST_RANK_PROBE": "1"}


def assert_partitioned(run: Path) -> None:
    """ZeRO-3 really partitioned the trained module: on each process every tensor, frozen
    and LoRA alike, is a slice (``param.data`` empty), and the slices cover the whole."""
    shares = [json.loads((run / f"rank{r}.shares.json").read_text()) for r in (0, 1)]
    for kind in ("frozen", "lora"):
        assert all(s[kind]["data"] == 0 and s[kind]["local"] < s[kind]["full"] for s in shares)
        assert sum(s[kind]["local"] for s in shares) >= shares[0][kind]["full"], shares


def assert_whole(run: Path) -> None:
    """Not partitioned (DDP, ZeRO-2): every process holds every tensor whole."""
    shares = [json.loads((run / f"rank{r}.shares.json").read_text()) for r in (0, 1)]
    for kind in ("frozen", "lora"):
        assert all(s[kind]["local"] == s[kind]["full"] == s[kind]["data"] for s in shares)


def rank_losses(run: Path) -> list[list[float]]:
    """The loss each process logged per step (the rank-averaged loss, seen by each)."""
    return [[float(x) for x in (run / f"rank{r}.losses").read_text().splitlines()] for r in (0, 1)]
