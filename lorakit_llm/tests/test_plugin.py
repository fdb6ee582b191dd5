"""Registration, config section, templates, LoRA options, and the test assets themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorakit.config import load_config
from lorakit.errors import ConfigError


def test_plugin_modules_import_nothing_heavy() -> None:
    code = (
        "import sys, lorakit_llm.plugin, lorakit_llm.chat, lorakit_llm.readers, "
        "lorakit_llm.chat_templates, lorakit_llm.section, lorakit_llm.grpo.reader, "
        "lorakit_llm.grpo.rewards, lorakit_llm.grpo.builtin_rewards; "
        "heavy = {'torch', 'transformers', 'peft', 'accelerate'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_registrations(llm_plugins: Any) -> None:
    registries = llm_plugins.registries
    spec = registries.backends.get("llm")
    assert spec.task_types == ("text-generation",)
    from lorakit.backend_plugin import VERBS

    assert {v for v in VERBS if spec.supports(v)} == set(VERBS)
    assert list(spec.templates) == ["7b", "qlora", "dpo", "orpo", "grpo"]
    readers = {"qa", "prompt_completion", "alpaca", "chat", "text", "preference", "prompt"}
    assert readers <= set(registries.dataset_readers.names())
    assert registries.exporters.get("peft").backends == ("llm",)


@pytest.mark.parametrize("name", ["7b", "qlora"])
def test_templates_are_valid_configs(name: str, tmp_path: Path) -> None:
    from lorakit.app import template_text

    path = tmp_path / f"{name}.yaml"
    path.write_text(template_text("llm", name))
    config = load_config(path, check_paths=False)
    assert config.backend == "llm"
    assert config.train.gradient_checkpointing and config.train.mixed_precision == "bf16"
    assert config.section.max_seq_len == 2048 and config.section.packing
    assert config.section.load_in_4bit is (name == "qlora")


def test_section_defaults_and_errors(assets: dict[str, Path], tmp_path: Path) -> None:
    from llm_helpers import llm_config

    data = llm_config(assets, tmp_path / "out")
    del data["llm"]
    section = load_config(data=data).section
    assert (section.max_seq_len, section.packing, section.train_on_inputs) == (2048, True, False)
    assert (section.dataset_format, section.load_in_4bit, section.chat_template) == (
        "auto",
        False,
        None,
    )
    with pytest.raises(
        ConfigError, match=r"llm\.max_seq_lenn: unknown key \(did you mean 'max_seq_len'\?\)"
    ):
        load_config(data=llm_config(assets, tmp_path / "out", llm={"max_seq_lenn": 10}))


def test_lora_options_reach_peft(assets: dict[str, Path], tmp_path: Path) -> None:
    from llm_helpers import llm_config
    from lorakit_llm.backend import lora_config

    config = load_config(data=llm_config(assets, tmp_path / "o", llm={}))
    default = lora_config(config, config.section)
    assert default.target_modules == {"q_proj", "v_proj"} and default.task_type == "CAUSAL_LM"
    data = llm_config(
        assets,
        tmp_path / "o",
        target_modules="all-linear",
        lora_dropout=0.1,
        llm={"use_rslora": True, "use_dora": True, "modules_to_save": "lm_head"},
    )
    config = load_config(data=data)
    options = lora_config(config, config.section)
    assert options.target_modules == "all-linear" and options.lora_dropout == 0.1
    assert options.use_rslora and options.use_dora and options.modules_to_save == ["lm_head"]


def test_dora_and_rslora_train(assets: dict[str, Path], tmp_path: Path) -> None:
    from llm_helpers import make_backend

    backend, _, dataset = make_backend(
        assets,
        tmp_path / "d",
        target_modules="all-linear",
        llm={"use_dora": True, "use_rslora": True},
    )
    names = [n for n, p in backend.model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names) and any("down_proj" in n for n in names)
    out = backend.loss(backend.model, backend.collate([dataset[0]]))
    out.loss_sum.backward()


def test_adapter_detection(tmp_path: Path) -> None:
    from lorakit_llm.plugin import is_adapter

    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    assert is_adapter(tmp_path / "run") and is_adapter(tmp_path / "run" / "adapter")
    assert is_adapter(f"name={tmp_path / 'run'}")
    assert not is_adapter(tmp_path) and not is_adapter(tmp_path / "missing")


def test_gguf_asset_loads_like_the_folder(assets: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from llm_helpers import probe_ids
    from lorakit_llm.loading import file_magic, load_base
    from lorakit_llm.testing import write_gguf

    ids = probe_ids(assets["model"])
    folder, folder_tok = load_base(str(assets["model"]), dtype=torch.float32)
    gguf, gguf_tok = load_base(str(assets["gguf"]), dtype=torch.float32)
    assert gguf_tok(PROBE_TEXT)["input_ids"] == folder_tok(PROBE_TEXT)["input_ids"]
    assert gguf_tok.chat_template == folder_tok.chat_template
    with torch.no_grad():
        assert torch.equal(gguf(ids).logits, folder(ids).logits)
        half, _ = load_base(
            str(write_gguf(assets["model"], tmp_path / "m.f16.gguf", dtype="f16")),
            dtype=torch.float32,
        )
        assert (half(ids).logits - folder(ids).logits).abs().max() < 5e-3
    assert file_magic(assets["gguf"]) == "gguf" and file_magic(assets["ggml"]) == "ggjt"


PROBE_TEXT = "What is the capital of Kenya? Nairobi."


def test_chat_command_is_registered(llm_plugins: Any) -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    llm_plugins.add_commands(app)
    result = CliRunner().invoke(app, ["chat", "--help"])
    assert result.exit_code == 0, result.output
    assert "--adapter" in result.output and "--combine" in result.output
    assert "--prompt" in result.output


def test_model_loaders_pick_the_format(assets: dict[str, Path], llm_plugins: Any) -> None:
    registries = llm_plugins.registries
    loaders = {e.spec.name for e in registries.model_loaders if e.spec.backend == "llm"}
    assert loaders == {"hf", "gguf", "ggml"}

    def pick(source: Any) -> str:
        return registries.model_loader_for("llm", str(source)).name

    assert pick(assets["model"]) == "hf" and pick("meta-llama/Llama-2-7b-hf") == "hf"
    assert pick(assets["gguf"]) == "gguf" and pick(assets["gguf"].parent) == "gguf"
    assert pick(assets["ggml"]) == "ggml"


def test_every_command_loads_the_base_through_the_loader_hook(
    assets: dict[str, Path], tmp_path: Path, llm_plugins: Any
) -> None:
    """A third party's loader for its own source scheme serves train, sample, chat and merge;
    merge asks it for the dtype it writes (bf16 stays bf16)."""
    import torch
    from llm_helpers import cli, llm_config
    from lorakit_llm.loading import load_any
    from safetensors import safe_open

    from lorakit.api import ModelLoaderSpec, hookimpl
    from lorakit.config import load_config
    from lorakit.engine import train

    calls: list[tuple[str, Any]] = []

    def load(source: str, **options: Any) -> Any:
        calls.append((source, options.get("dtype")))
        return load_any(str(assets["model"]), **options)

    class Vault:
        @hookimpl
        def register_model_loaders(self, register: Any) -> None:
            register(
                ModelLoaderSpec(
                    "vault",
                    "llm",
                    detect=lambda s: s.startswith("vault/"),
                    load=load,
                    description="models from a vault",
                )
            )

    llm_plugins.add(Vault(), name="vault", distribution="lorakit-vault", version="1.0")
    try:
        result = train(
            load_config(
                data=llm_config(assets, tmp_path / "run", max_steps=2, base_model="vault/tiny")
            ),
            progress=False,
        )
        assert [c[0] for c in calls] == ["vault/tiny", "vault/tiny"]  # check, then load
        adapter = result.output_dir / "adapter"
        assert (
            cli(
                "sample",
                "--base",
                "vault/tiny",
                "--adapter",
                adapter,
                "-p",
                "Hi",
                "-o",
                tmp_path / "s",
                "--steps",
                "2",
            )
            == 0
        )
        assert (
            cli(
                "chat",
                "--base",
                "vault/tiny",
                "--adapter",
                adapter,
                "--prompt",
                "Hi",
                "--max-new-tokens",
                "2",
            )
            == 0
        )
        calls.clear()
        assert (
            cli(
                "merge",
                "--base",
                "vault/tiny",
                "--adapter",
                adapter,
                "-o",
                tmp_path / "m",
                "--dtype",
                "bfloat16",
            )
            == 0
        )
        assert calls == [("vault/tiny", torch.bfloat16)]
        with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as handle:
            assert {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118 == {torch.bfloat16}
        # A loader named in the config wins over detection.
        config = load_config(
            data=llm_config(assets, tmp_path / "r2", max_steps=1, model_loader="vault")
        )
        calls.clear()
        train(config, progress=False)
        assert calls and calls[0][0] == str(assets["model"])
    finally:
        llm_plugins.pm.unregister(name="vault")
        llm_plugins.infos.pop("vault", None)
        llm_plugins._registries = None
