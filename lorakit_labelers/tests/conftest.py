from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorakit.testing import restore_installed

restore_installed("lorakit_labelers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from lorakit_labelers.testing import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "clip")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    from lorakit_labelers.testing import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("models") / "blip")


@pytest.fixture(autouse=True)
def labeler_plugins():
    """lorakit-labelers registered in-process, without other installed plugins."""
    from lorakit.plugins import build_plugins, set_plugins
    from lorakit_labelers import plugin

    set_plugins(build_plugins(entry_points=False, extra=[("labelers", plugin)]))
    yield
    set_plugins(None)


@pytest.fixture
def images(tmp_path) -> Path:
    """Five small generated images in a fresh folder."""
    from lorakit_labelers.testing import write_sample_images

    folder = tmp_path / "data"
    write_sample_images(folder, 5)
    return folder


@pytest.fixture
def cli(capsys):
    """Run ``lorakit ARGS`` in-process: returns (exit code, stdout, stderr)."""
    from lorakit.testing import run_cli

    return lambda *args: run_cli(capsys, *args)
