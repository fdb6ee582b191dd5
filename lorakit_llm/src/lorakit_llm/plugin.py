"""Entry point of lorakit-llm: registrations only; nothing heavy is imported here.

Registers the ``llm`` backend (task ``text-generation``), its dataset readers, the ``peft``
exporter and the ``lorakit chat`` command. Every factory is lazy: torch, transformers and
peft load only when a command needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakit.api import BackendSpec, DatasetReaderSpec, ExporterSpec, hookimpl, lazy
from lorakit_llm.section import LLMSection

LORAKIT_PLUGIN_API = 1

READERS = (
    ("chat", "JSONL chat: messages [{role, content}] (or ShareGPT conversations)"),
    ("alpaca", "JSONL alpaca: instruction, input, output"),
    ("qa", "JSONL QA pairs: question, answer"),
    ("prompt_completion", "JSONL prompt, completion (raw text, loss on the completion)"),
    ("text", "plain text: .txt files or JSONL with a text key"),
)


def is_adapter(path: Any) -> bool:
    """A PEFT adapter folder (or a run folder with ``adapter/``), also as ``NAME=PATH``."""
    text = str(path)
    name, sep, rest = text.partition("=")
    folder = Path(rest if sep and name and "/" not in name else text).expanduser()
    return any((f / "adapter_config.json").is_file() for f in (folder, folder / "adapter"))


@hookimpl
def register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="llm",
            task_types=("text-generation",),
            factory=lazy("lorakit_llm.backend:LLMBackend"),
            description="LoRA / QLoRA for causal language models (transformers + PEFT)",
            config_model=LLMSection,
            commands={
                "merge": lazy("lorakit_llm.export:merge_command"),
                "sample": lazy("lorakit_llm.export:sample_command"),
                "demo": lazy("lorakit_llm.demo:demo_command"),
                "selftest": lazy("lorakit_llm.selftest:verify"),
            },
            templates={
                "7b": ("lorakit_llm", "templates/7b.yaml"),
                "qlora": ("lorakit_llm", "templates/qlora.yaml"),
            },
            detect=is_adapter,
            planner=lazy("lorakit_llm.plan:planner"),
        )
    )


@hookimpl
def register_dataset_readers(register: Callable[[DatasetReaderSpec], None]) -> None:
    for name, description in READERS:
        register(
            DatasetReaderSpec(
                name=name,
                factory=lazy(f"lorakit_llm.readers:read_{name}"),
                description=description,
                modality="text",
                detect=lazy(f"lorakit_llm.readers:detect_{name}"),
            )
        )


@hookimpl
def register_exporters(register: Callable[[ExporterSpec], None]) -> None:
    register(
        ExporterSpec(
            name="peft",
            factory=lazy("lorakit_llm.export:export_peft"),
            description="PEFT adapter folder adapter/ (PeftModel.from_pretrained loads it)",
            backends=("llm",),
        )
    )


@hookimpl
def register_commands(app: Any) -> None:
    from lorakit_llm.chat import register

    register(app)
