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


@pytest.fixture(scope="session")
def finished_runs(tiny_sd: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three finished tiny runs in one runs folder, trained in this process (a few seconds):
    ``sd-a`` and ``sd-b`` (image; they differ in learning_rate and lora_rank; samples and a
    checkpoint every 2 steps) and ``chat`` (text; a checkpoint at step 5)."""
    from lorakit_llm.testing import build_tiny_llama, write_qa_jsonl
    from lorakit_sd.testing import tiny_config, write_tiny_images

    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.testing import one_thread

    root = tmp_path_factory.mktemp("finished")
    runs = root / "runs"
    prompts = ["a red circle", "a blue square"]
    with one_thread():
        data = write_tiny_images(root / "data", 4)
        for name, more in (("sd-a", {}), ("sd-b", {"learning_rate": 5e-3, "lora_rank": 2})):
            config = tiny_config(
                tiny_sd,
                data,
                runs / name,
                save_steps=2,
                sample_prompts=prompts,
                sample_every_n_steps=2,
                **more,
            )
            train(load_config(data=config), progress=False)
        llama = build_tiny_llama(root / "llama")
        qa = write_qa_jsonl(root / "qa" / "train.jsonl", 40)
        config = {
            "task_type": "text-generation",
            "base_model": str(llama),
            "train_data_dir": str(qa.parent),
            "output_dir": str(runs / "chat"),
            "lora_rank": 8,
            "lora_alpha": 16,
            "batch_size": 4,
            "max_steps": 10,
            "learning_rate": 3e-2,
            "save_steps": 5,
            "seed": 0,
            "trackers": ["jsonl"],
            "llm": {"max_seq_len": 128},
        }
        train(load_config(data=config), progress=False)
    return {"runs": runs, "llama": llama, "prompts": prompts}
