"""Adapters and transcripts from strangers: a broken ``adapter_config.json`` is one line naming
it, a pickled ``adapter_model.bin`` is refused and never unpickled, and what a model says is
shown as text (its escape sequences never reach the terminal)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from lorakit.testing import run_cli


class PickleBomb:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


def adapter_folder(root: Path, model: Path, config_text: str | None = None) -> Path:
    folder = root / "adapter"
    folder.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": str(model),
    }
    (folder / "adapter_config.json").write_text(config_text or json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('{"r": 4, "lora_alpha": ', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"r": "four", "lora_alpha": 8}', "r ('four') and lora_alpha (8) must be numbers"),
    ],
)
def test_export_gguf_names_a_broken_adapter_config(
    tmp_path: Path, assets: dict[str, Path], capsys: Any, text: str, fragment: str
) -> None:
    folder = adapter_folder(tmp_path, assets["model"], text)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    code, out, err = run_cli(
        capsys, "export", folder, "--to", "gguf", "--backend", "llm", "--base", assets["gguf"]
    )
    assert code == 2, out + err
    line = err.strip()
    assert "\n" not in line and str(folder / "adapter_config.json") in line and fragment in line


def test_sample_refuses_a_pickled_adapter(
    tmp_path: Path, assets: dict[str, Path], capsys: Any
) -> None:
    marker = tmp_path / "the-pickle-ran"
    folder = adapter_folder(tmp_path, assets["model"])
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"payload": PickleBomb(marker)}))
    for lora in (folder, folder / "adapter_model.bin"):
        code, out, err = run_cli(
            capsys,
            "sample",
            "--backend",
            "llm",
            "--base",
            assets["model"],
            "--lora",
            lora,
            "-p",
            "hello",
            "-o",
            tmp_path / "s",
        )
        assert code == 2, out + err
        line = err.strip()
        assert "\n" not in line and "pickle" in line and str(lora) in line, err
    assert not marker.exists()


def test_chat_shows_the_answer_as_text(monkeypatch: Any, capsys: Any) -> None:
    from lorakit_llm import chat_session

    class Session:
        active = "base"

        def ask(self, prompt: str) -> str:
            return "\x1b]0;owned\x07\x1b[2Jcleared\rfake\nsecond line"

    monkeypatch.setattr(
        chat_session.ChatSession, "open", classmethod(lambda cls, *a, **k: Session())
    )
    from llm_helpers import cli

    assert cli("chat", "--base", "whatever", "--prompt", "hi") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2Jcleared\\rfake\nsecond line" in out


def test_a_base_folder_of_pickled_weights_is_refused(
    tmp_path: Path, assets: dict[str, Path], capsys: Any
) -> None:
    import shutil

    from llm_helpers import llm_config

    from lorakit.testing import write_config

    marker = tmp_path / "the-pickle-ran"
    base = tmp_path / "shared-base"
    shutil.copytree(assets["model"], base)
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(pickle.dumps({"payload": PickleBomb(marker)}))
    config = write_config(
        tmp_path / "run.yaml", llm_config(assets, tmp_path / "out", base_model=str(base))
    )
    code, out, err = run_cli(capsys, "train", "--config", config, "--no-progress")
    assert code == 2, out + err
    line = err.strip().splitlines()[-1]
    assert str(base) in line and "pytorch_model.bin" in line and "--allow-unsafe-pickle" in line
    assert not marker.exists()
