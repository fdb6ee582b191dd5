from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")


@pytest.fixture
def toy_plugins():
    """A plugin manager with the built-ins and the toy backend, no entry points."""
    import toy_backend

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("toy", toy_backend)])
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


def toy_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    toy = {
        k: overrides.pop(k)
        for k in ("samples", "slow_ms", "head_lr", "oom_above")
        if k in overrides
    }
    data = {
        "task_type": "toy-regression",
        "base_model": "toy/mlp",
        "train_data_dir": str(tmp_path),
        "output_dir": str(tmp_path / "run"),
        "lora_rank": 4,
        "batch_size": 8,
        "epochs": 2,
        "learning_rate": 1e-2,
        "seed": 0,
        "trackers": ["jsonl"],
        "toy": toy,
    }
    data.update(overrides)
    return data


@pytest.fixture(scope="session")
def toy_env(tmp_path_factory) -> dict[str, str]:
    """Environment for subprocesses in which the toy backend is an installed plugin.

    A real distribution (dist-info + entry point) on PYTHONPATH, found through entry points
    exactly as a third party's package would be.
    """
    site = tmp_path_factory.mktemp("site")
    info = site / "lorakit_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lorakit-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lorakit]\ntoy = toy_backend\n")
    path = os.pathsep.join([str(site), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> dict[str, str]:
    """Tiny random-weight base models for the bad-input corpus's placeholders."""
    from lorakit_llm.testing import build_tiny_llama
    from lorakit_sd.families.unet_standin import build_tiny_sd

    root = tmp_path_factory.mktemp("bases")
    sd = build_tiny_sd(root / "sd")
    return {
        "sd_single": str(sd.single_file),
        "sd_config": str(sd.config_dir),
        "llm_base": str(build_tiny_llama(root / "llm")),
    }
