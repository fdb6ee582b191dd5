"""Fixtures for lorakit-ui: the app on a temporary runs folder, a tiny SD model and images."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from lorakit.testing import restore_installed

sys.path.append(str(Path(__file__).parent))  # for ui_helpers; after the other folders
restore_installed("lorakit_ui")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def client(runs_dir: Path) -> Any:
    """A client as the page itself is: the server's Host and Origin, the token's cookie."""
    from lorakit_ui.server import create_app
    from starlette.testclient import TestClient
    from ui_helpers import ORIGIN, TOKEN

    app = create_app(runs_dir, token=TOKEN, port=7860)
    with TestClient(app, base_url=ORIGIN, headers={"origin": ORIGIN}) as test_client:
        test_client.cookies.set("lorakit_ui_token_7860", TOKEN)
        yield test_client


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny random SD1-shaped model saved as a diffusers folder (built once)."""
    from lorakit_sd.families.unet_standin import build_tiny_sd

    from lorakit.testing import one_thread

    with one_thread():
        return build_tiny_sd(tmp_path_factory.mktemp("model") / "sd1")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Four 32-pixel images with metadata.csv."""
    from lorakit_sd.testing import write_tiny_images

    return write_tiny_images(tmp_path / "data", 4)
