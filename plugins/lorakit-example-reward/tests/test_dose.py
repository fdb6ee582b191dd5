"""The example reward as a user meets it: installed, found through its entry point, and run
by ``lorakit train`` with ``llm.method: grpo`` (a row it cannot read is one line)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorakit_example_reward.dose import dose_in_range, last_dose

SOURCE = Path(__file__).resolve().parent.parent / "src" / "lorakit_example_reward"


def lorakit(*args: object) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process: plugins come from installed entry points only."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lorakit.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_found_through_its_entry_point() -> None:
    from lorakit.plugins import build_plugins

    plugins = build_plugins()
    entry = plugins.registries.rewards.entry("dose_in_range")
    assert (entry.plugin, entry.distribution) == ("example-reward", "lorakit-example-reward")
    assert plugins.infos["example-reward"].registered == {"reward": ["dose_in_range"]}


def test_the_dose_reward() -> None:
    assert last_dose("take 200 mg, then 1,000 mg") == 1000.0
    assert last_dose("2.5mg at night") == 2.5 and last_dose("200 mcg") is None
    reward = dose_in_range()
    rows = [{"min_dose": 200, "max_dose": 400}] * 3
    assert reward([""] * 3, ["400 mg", "600 mg", "some"], rows) == [1.0, 0.0, 0.0]


def test_imports_only_the_public_api() -> None:
    imported = set()
    for path in SOURCE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.split(".")[0] == "lorakit"} == {"lorakit.api"}


def test_grpo_runs_the_reward_and_a_row_it_cannot_read_is_one_line(tmp_path: Path) -> None:
    testing = pytest.importorskip("lorakit_llm.testing")
    model = testing.build_tiny_llama(tmp_path / "tiny")
    rows = [
        {"prompt": f"Adult dose of drug {i}?", "min_dose": 100, "max_dose": 400} for i in range(4)
    ]
    data = tmp_path / "doses.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "base_model": str(model),
        "train_data_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "lora_rank": 4,
        "batch_size": 2,
        "max_steps": 2,
        "logging_steps": 1,
        "trackers": ["jsonl"],
        "llm": {
            "method": "grpo",
            "rewards": ["dose_in_range"],
            "num_generations": 2,
            "max_completion_length": 4,
            "max_seq_len": 64,
        },
    }
    path = tmp_path / "grpo.json"
    path.write_text(json.dumps(config))
    result = lorakit("train", "--config", path)
    assert result.returncode == 0, result.stderr
    logged = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/dose_in_range/mean" in logged[-1]

    del rows[2]["max_dose"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config.update(output_dir=str(tmp_path / "broken"), batch_size=4)
    path.write_text(json.dumps(config))
    result = lorakit("train", "--config", path)
    assert result.returncode == 2
    assert f"reward 'dose_in_range' failed on row {data}:3: KeyError" in result.stderr
    assert "Traceback" not in result.stderr
