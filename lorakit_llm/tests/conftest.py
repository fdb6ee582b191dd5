"""Fixtures: a tiny random Llama (folder + GGUF), synthetic QA data, one trained run."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from lorakit.testing import one_thread, restore_installed

# Appended, not prepended: other test folders import their own "conftest" by name.
sys.path.append(str(Path(__file__).parent))

restore_installed("lorakit_llm")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LORAKIT_NO_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(scope="session")
def llm_plugins() -> Any:
    """Built-ins plus lorakit-llm only (no other entry points), as the process-wide manager."""
    import lorakit_llm.plugin

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("llm", lorakit_llm.plugin)])
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def _plugins(llm_plugins: Any) -> Any:
    from lorakit.plugins import set_plugins

    set_plugins(llm_plugins)
    yield llm_plugins
    set_plugins(None)  # the next file's tests (same worker) see the installed plugins


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model as a folder and as a GGUF file, a GGML stub and 150 QA pairs."""
    from lorakit_llm.testing import build_tiny_llama, write_ggml_stub, write_gguf, write_qa_jsonl

    root = tmp_path_factory.mktemp("llm-assets")
    with one_thread():
        model = build_tiny_llama(root / "tiny-llama")
    return {
        "root": root,
        "model": model,
        "gguf": write_gguf(model, root / "gguf" / "tiny-llama.f32.gguf"),
        "ggml": write_ggml_stub(root / "llama-2-7b-chat.ggmlv3.q4_0.bin"),
        "qa": write_qa_jsonl(root / "qa" / "train.jsonl", 150),
    }


@pytest.fixture(scope="session")
def trained(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, llm_plugins: Any):
    """One run on the 150 QA pairs; the in-memory model's logits on probe_ids() kept."""
    import torch
    from llm_helpers import llm_config, probe_ids

    import lorakit
    from lorakit.config import load_config
    from lorakit.engine import train

    captured: dict[str, Any] = {}
    ids = probe_ids(assets["model"])

    class Capture:
        @lorakit.hookimpl
        def on_train_end(self, run: Any, outputs: list[str]) -> None:
            model = run.backend.model
            model.eval()
            with torch.no_grad():
                captured["logits"] = model(input_ids=ids).logits.clone()

    llm_plugins.add(Capture(), name="capture")
    try:
        out = tmp_path_factory.mktemp("run") / "capitals"
        config = load_config(
            data=llm_config(
                assets,
                out,
                sample_prompts=["What is the capital of France?"],
                sample_every_n_steps=20,
            )
        )
        with one_thread():
            result = train(config, plugins=llm_plugins, progress=False)
    finally:
        llm_plugins.pm.unregister(name="capture")
        llm_plugins.infos.pop("capture", None)
    return {"result": result, "logits": captured["logits"], "output": out, "config": config}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Any:
    """Each test starts from no accelerate state: TRL's Trainer and in-process runs at another
    mixed precision (the templates' bf16) set accelerate's process-wide state, which a later
    ``Accelerator(mixed_precision=...)`` in the same process may not change."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
