"""Fixtures for lorakit-sd: tiny SD1/SDXL models built once per session, tiny image folders."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

sys.path.append(str(Path(__file__).parent))  # for sd_helpers; after the other folders
# pytest's importlib mode imports this file as "lorakit_sd.tests.conftest" and registers the
# project folder lorakit_sd/ (no __init__.py) as the module "lorakit_sd", hiding the installed
# package (src/lorakit_sd): put the real package back.
if getattr(sys.modules.get("lorakit_sd"), "__file__", None) is None:
    sys.modules.pop("lorakit_sd", None)
    importlib.import_module("lorakit_sd")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing is deprecated.*")
warnings.filterwarnings("ignore", message=".*safety checker.*")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"sd1": TinyModel, "sdxl": TinyModel}``, each saved as a folder and a single file."""
    from lorakit_sd.testing import build_tiny_sd
    from sd_helpers import one_thread

    root = tmp_path_factory.mktemp("models")
    with one_thread():
        return {family: build_tiny_sd(root / family, family) for family in ("sd1", "sdxl")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Every test module of this package runs torch on one thread (restored after)."""
    from sd_helpers import one_thread

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
