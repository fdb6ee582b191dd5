"""Fixtures: the tiny SANA model (built once), a plugin manager with lorakit-sd and this
package only (as a user has them installed), an image folder."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing is deprecated.*")


@pytest.fixture(scope="session")
def sana(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lorakit_family_sana.standin import build_tiny_sana

    return build_tiny_sana(tmp_path_factory.mktemp("sana"))


@pytest.fixture
def plugins() -> Any:
    import lorakit_family_sana.plugin
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    made = build_plugins(
        entry_points=False,
        extra=[("sd", lorakit_sd.plugin), ("sana", lorakit_family_sana.plugin)],
    )
    set_plugins(made)
    yield made
    set_plugins(None)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    from lorakit_sd.testing import write_tiny_images

    return write_tiny_images(tmp_path / "data", 4, sizes=[(32, 32), (32, 32)])
