"""What the ``llm`` backend hands to exporters: its :class:`lorakit.api.AdapterExport`.

Besides the tensors, the view carries PEFT's own folder writer (``save_pretrained``), so
the ``peft`` exporter writes what ``PeftModel.from_pretrained`` reads without knowing the
backend, and the chat template the adapter was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import AdapterExport, Network, trainable_state_dict


def base_reference(base: str) -> str:
    """The base model as an adapter should name it: an absolute path, or the hub id.

    For a ``.gguf`` base, the folder that holds it: what ``from_pretrained(folder,
    gguf_file=name)`` takes (the file's name is in ``lorakit.json`` as ``base_gguf_file``).
    """
    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.resolve().parent)
    return str(path.resolve()) if path.exists() else base


def save_pretrained(model: Any, directory: Path, base: str) -> None:
    """PEFT's adapter folder of ``model`` in ``directory``, naming ``base`` as its base."""
    from peft.tuners.lora import Embedding

    peft_config = model.peft_config["default"]
    peft_config.base_model_name_or_path = base_reference(base)
    # lorakit never resizes the vocabulary: only a LoRA on an embedding saves embeddings
    # (peft's "auto" would look for the base's config.json, on the hub if need be).
    lora_on_embedding = any(isinstance(m, Embedding) for m in model.modules())
    model.save_pretrained(
        str(directory), safe_serialization=True, save_embedding_layers=lora_on_embedding
    )


def adapter_export(backend: Any, step: int) -> AdapterExport:
    """The view of ``backend`` (a set-up :class:`lorakit_llm.backend.LLMBackend`)."""
    t, section = backend.config.train, backend.section

    def write(directory: Path) -> None:
        save_pretrained(backend.model, Path(directory), t.base_model)
        if backend.method is not None:
            backend.method.after_save(Path(directory))

    return AdapterExport(
        backend="llm",
        network=Network(
            type="dora" if section.use_dora else "lora",
            rank=t.lora_rank,
            alpha=t.alpha,
            dropout=t.lora_dropout,
            args={"use_rslora": str(section.use_rslora)},
        ),
        state_dict=lambda: trainable_state_dict(backend.model),
        family=str(getattr(backend.model.config, "model_type", "") or ""),
        base_model=t.base_model,
        started_at=backend.started_at,
        model_config=backend.model.config.to_dict(),
        metadata=backend.export_metadata(),
        save_pretrained=write,
        chat_template=getattr(backend.tokenizer, "chat_template", None),
    )
