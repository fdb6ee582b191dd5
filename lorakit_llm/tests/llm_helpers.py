"""Helpers shared by the lorakit-llm tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.testing import one_thread  # noqa: F401  (re-exported for the tests)


def llm_config(assets: dict[str, Path], output: Path, **overrides: Any) -> dict[str, Any]:
    """A config dict for a short run on the tiny model."""
    llm = {"max_seq_len": 128, **overrides.pop("llm", {})}
    data: dict[str, Any] = {
        "task_type": "text-generation",
        "base_model": str(assets["model"]),
        "train_data_dir": str(assets["qa"].parent),
        "output_dir": str(output),
        "lora_rank": 8,
        "lora_alpha": 16,
        "batch_size": 4,
        "max_steps": 40,
        "learning_rate": 3e-2,
        "seed": 0,
        "trackers": ["jsonl"],
        "llm": llm,
    }
    data.update(overrides)
    return data


PROBE = "<s><|user|>\nWhat is the capital of Peru?</s>\n<|assistant|>\nLima."


def probe_ids(model_dir: Path) -> Any:
    """Token ids of a short chat exchange, for comparing logits."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer(PROBE, add_special_tokens=False, return_tensors="pt")["input_ids"]


def make_backend(
    assets: dict[str, Path], output: Path, *, log: list[str] | None = None, **overrides: Any
) -> tuple[Any, Any, Any]:
    """``(backend, ctx, dataset)`` set up outside the engine, as the engine would.

    ``log`` collects what the backend prints to the run's header.
    """
    import torch
    from accelerate import Accelerator
    from lorakit_llm.backend import LLMBackend

    from lorakit.backend import TrainContext
    from lorakit.config import load_config
    from lorakit.plugins import get_registries

    config = load_config(data=llm_config(assets, output, **overrides))
    ctx = TrainContext(
        config=config,
        accelerator=Accelerator(cpu=True),
        output_dir=output,
        cache_dir=output / "cache",
        registries=get_registries(),
        weight_dtype=torch.float32,
        log=(lambda *a: log.append(" ".join(map(str, a)))) if log is not None else lambda *a: None,
    )
    torch.manual_seed(0)
    backend = LLMBackend(config)
    backend.setup(ctx)
    dataset = backend.dataset(ctx)
    return backend, ctx, dataset


def cli(*args: str) -> int:
    """Run the lorakit CLI in-process; its exit code."""
    import lorakit.cli

    # The CLI builds its command tree once per process, maybe before lorakit-llm was loaded.
    if not any(
        c.callback and c.callback.__name__ == "chat" for c in lorakit.cli.app.registered_commands
    ):
        from lorakit_llm.chat import register

        register(lorakit.cli.app)
    from lorakit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
