"""Fixtures for lorakit-sd: tiny SD1/SDXL models built once per session, tiny image folders."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from lorakit.testing import one_thread, restore_installed

sys.path.append(str(Path(__file__).parent))  # for sd_helpers; after the other folders
restore_installed("lorakit_sd")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing is deprecated.*")
warnings.filterwarnings("ignore", message=".*safety checker.*")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"sd1": TinyModel, "sdxl": TinyModel}``, each saved as a folder and a single file."""
    from lorakit_sd.families.unet_standin import build_tiny_sd

    root = tmp_path_factory.mktemp("models")
    with one_thread():
        return {family: build_tiny_sd(root / family, family) for family in ("sd1", "sdxl")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Every test module of this package runs torch on one thread (restored after)."""
    with one_thread():
        yield


@pytest.fixture
def images4(tmp_path: Path) -> Path:
    """Four 32-pixel images (two aspect ratios) with metadata.csv."""
    from lorakit_sd.testing import write_tiny_images

    return write_tiny_images(tmp_path / "data", 4, sizes=[(32, 32), (48, 32)])


@pytest.fixture
def sd_plugins() -> Any:
    """A plugin manager with the built-ins and lorakit-sd, without other entry points."""
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    yield plugins
    set_plugins(None)
