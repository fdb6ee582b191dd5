"""Entry point of lorakit-llm: registrations only; nothing heavy is imported here.

Registers the ``llm`` backend (task ``text-generation``), its model loaders (``hf``,
``gguf``, ``ggml``), its dataset readers, the ``peft`` exporter, the GRPO rewards and the
``lorakit chat`` command. Every factory is lazy: torch, transformers and
peft load only when a command needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakit.api import (
    Backend,
    BackendPlugin,
    Chat,
    Config,
    DataReport,
    DatasetReaderSpec,
    ExporterSpec,
    FileKind,
    FileProbe,
    ModelLoaderSpec,
    PlanModel,
    RewardSpec,
    WeightedLora,
    hookimpl,
    lazy,
)
from lorakit_llm.section import LLMSection

LORAKIT_PLUGIN_API = 2

READERS = (
    ("chat", "JSONL chat: messages [{role, content}] (or ShareGPT conversations)"),
    ("alpaca", "JSONL alpaca: instruction, input, output"),
    ("qa", "JSONL QA pairs: question, answer"),
    ("prompt_completion", "JSONL prompt, completion (raw text, loss on the completion)"),
    ("text", "plain text: .txt files or JSONL with a text key"),
    ("preference", "JSONL preference pairs: prompt, chosen, rejected (llm.method dpo/orpo/simpo)"),
    ("prompt", "JSONL prompts and the fields rewards read: prompt, answer, ... (llm.method grpo)"),
)
#: Readers whose code is not in lorakit_llm.readers.
READER_MODULES = {
    "preference": "lorakit_llm.preference.reader",
    "prompt": "lorakit_llm.grpo.reader",
}


def is_adapter(path: Any) -> bool:
    """A PEFT adapter folder (or a run folder with ``adapter/``), also as ``NAME=PATH``."""
    text = str(path)
    name, sep, rest = text.partition("=")
    folder = Path(rest if sep and name and "/" not in name else text).expanduser()
    return any((f / "adapter_config.json").is_file() for f in (folder, folder / "adapter"))


class LLMBackend(BackendPlugin):
    """The ``llm`` backend: LoRA / QLoRA for causal language models (transformers + PEFT).

    Every method imports its module when called, so registering it is cheap. ``lorakit
    chat`` is a command of its own (``register_commands``)."""

    name = "llm"
    task_types = ("text-generation",)
    description = "LoRA / QLoRA for causal language models (transformers + PEFT)"
    config_model = LLMSection
    templates = {
        "7b": ("lorakit_llm", "templates/7b.yaml"),
        "qlora": ("lorakit_llm", "templates/qlora.yaml"),
        "dpo": ("lorakit_llm", "templates/dpo.yaml"),
        "orpo": ("lorakit_llm", "templates/orpo.yaml"),
        "grpo": ("lorakit_llm", "templates/grpo.yaml"),
    }

    def create(self, config: Config) -> Backend:
        from lorakit_llm.backend import LLMBackend as Trainer

        return Trainer(config)

    def reads_model(self, base_model: str) -> str | None:
        from lorakit_llm.recognise import reads_model

        return reads_model(base_model)

    def reads_data(self, train_data_dir: str) -> str | None:
        from lorakit_llm.recognise import reads_data

        return reads_data(train_data_dir)

    def detect(self, path: Path) -> bool:
        """A PEFT adapter folder (or a run folder with ``adapter/``), also as ``NAME=PATH``."""
        return is_adapter(path)

    def identify(self, probe: FileProbe) -> FileKind | None:
        from lorakit_llm.identify import identify

        return identify(probe)

    def plan(self, config: Config) -> PlanModel:
        from lorakit_llm.plan import planner

        return planner(config)

    def inspect_data(self, config: Config, limit: int) -> DataReport:
        from lorakit.api import get_registries
        from lorakit_llm.inspect import inspect_text

        return inspect_text(config, get_registries(), limit)

    def export(
        self, source: Path, to: str, output: Path | None, base: str | None, config: Config | None
    ) -> list[Path]:
        from lorakit_llm.gguf_export import export_command

        return export_command(source, to, output, base)

    def merge(
        self,
        base: str,
        loras: list[WeightedLora],
        output: Path,
        dtype: str | None,
        config: Config | None,
    ) -> Path:
        from lorakit_llm.export import merge_command

        return merge_command(base, loras, output, dtype)

    def chat(
        self,
        base: str,
        loras: list[WeightedLora],
        dtype: str,
        chat_template: str | None,
        system: str | None,
        max_new_tokens: int,
    ) -> Chat:
        from lorakit_llm.chat_session import ChatSession

        return ChatSession.open(
            base,
            loras,
            dtype=dtype,
            chat_template=chat_template,
            system=system,
            max_new_tokens=max_new_tokens,
        )

    def sample(
        self,
        base: str,
        loras: list[WeightedLora],
        prompts: list[str],
        output: Path,
        seed: int,
        steps: int | None,
        config: Config | None,
        width: int | None,
        height: int | None,
    ) -> list[Path]:
        from lorakit_llm.export import sample_command

        return sample_command(base, loras, prompts, output, seed=seed, steps=steps, config=config)

    def demo(self, folder: Path) -> Path:
        from lorakit_llm.demo import demo_command

        return demo_command(folder)

    def demo_score(self, config_path: Path, run_dir: Path | None) -> str:
        from lorakit_llm.demo import demo_score

        return demo_score(config_path, run_dir)

    def selftest(self, output_dir: Path, config: Config) -> str:
        from lorakit_llm.selftest import verify

        return verify(output_dir, config)


@hookimpl
def register_backends(register: Callable[[BackendPlugin], None]) -> None:
    register(LLMBackend())


#: Model loaders of the llm backend: (name, description, priority); code in lorakit_llm.loading.
MODEL_LOADERS = (
    ("ggml", "old GGML .bin files (ggjt magic): refused, with the command that converts them", 20),
    ("gguf", "a .gguf file (llama.cpp), through transformers' gguf_file; weights dequantized", 10),
    ("hf", "a transformers model folder or a Hugging Face hub id", -10),
)


@hookimpl
def register_model_loaders(register: Callable[[ModelLoaderSpec], None]) -> None:
    loads = {"ggml": "load_ggml", "gguf": "load_any", "hf": "load_any"}
    checks = {"ggml": "load_ggml", "gguf": "check_any", "hf": "check_any"}
    for name, description, priority in MODEL_LOADERS:
        register(
            ModelLoaderSpec(
                name=name,
                backend="llm",
                detect=lazy(f"lorakit_llm.loading:detect_{name}"),
                load=lazy(f"lorakit_llm.loading:{loads[name]}"),
                description=description,
                priority=priority,
                check=lazy(f"lorakit_llm.loading:{checks[name]}"),
            )
        )


@hookimpl
def register_dataset_readers(register: Callable[[DatasetReaderSpec], None]) -> None:
    for name, description in READERS:
        module = READER_MODULES.get(name, "lorakit_llm.readers")
        register(
            DatasetReaderSpec(
                name=name,
                factory=lazy(f"{module}:read_{name}"),
                description=description,
                modality="text",
                detect=lazy(f"{module}:detect_{name}"),
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
def register_rewards(register: Callable[[RewardSpec], None]) -> None:
    from lorakit_llm.grpo.builtin_rewards import BUILTINS

    for name, description, options in BUILTINS:
        register(
            RewardSpec(
                name=name,
                factory=lazy(f"lorakit_llm.grpo.builtin_rewards:{name}"),
                description=description,
                options=options,
            )
        )


@hookimpl
def register_commands(app: Any) -> None:
    from lorakit_llm.chat import register

    register(app)
