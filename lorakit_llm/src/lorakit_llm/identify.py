"""What ``lorakit inspect`` says of the llm backend's files and folders.

- a GGUF LoRA adapter (``general.type = adapter``, what ``lorakit export --to gguf`` and
  llama.cpp's ``convert_lora_to_gguf.py`` write): its modules, rank, alpha and targets, read
  from the GGUF metadata and tensor shapes with the ``gguf`` package (no tensor data read);
- a GGUF base model: what it is, and that it is not an adapter;
- a run folder (``run.json`` + ``adapter/``, what ``lorakit chat`` also accepts): the adapter
  inside it, with the run's status;
- a PEFT adapter folder of a causal LM (``task_type: CAUSAL_LM``).

Imports no torch (``gguf`` needs numpy only).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from lorakit.api import FileKind, FileProbe, LoraSummary, RunFolder, UsageError, check_gguf

GGUF_MAGIC = b"GGUF"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    return field.contents()


def _gguf_reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise UsageError(
            "a GGUF file; reading it needs the gguf package: pip install gguf", where=str(path)
        ) from None
    check_gguf(path)  # counts, lengths and offsets fit the file before the reader trusts them
    try:
        return gguf.GGUFReader(str(path), "r")
    except (OSError, ValueError, KeyError, IndexError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"not a readable GGUF file ({text})", where=str(path)) from None


def _gguf_summary(path: Path, reader: Any) -> tuple[str, LoraSummary]:
    arch = _value(reader, "general.architecture") or "unknown architecture"
    kind = _value(reader, "general.type")
    metadata = {
        key: str(_value(reader, key))
        for key in reader.fields
        if key.startswith(("general.", "adapter.")) and not key.startswith("general.alignment")
    }
    summary = LoraSummary(size_bytes=path.stat().st_size, metadata=metadata)
    summary.dtypes = sorted({t.tensor_type.name for t in reader.tensors})
    summary.parameters = sum(int(t.n_elements) for t in reader.tensors)
    if kind != "adapter":
        summary.notes.append(
            f"a GGUF model ({arch}, {len(reader.tensors)} tensors), not a LoRA adapter; "
            f"lorakit-llm trains on it with base_model: {path}"
        )
        summary.made_by = str(_value(reader, "general.name") or "unknown")
        return f"GGUF model ({arch})", summary
    ranks: Counter[int] = Counter()
    targets: dict[str, None] = {}
    modules: set[str] = set()
    for tensor in reader.tensors:
        name = str(tensor.name)
        if name.endswith(".lora_a"):
            module = name.removesuffix(".lora_a")
            modules.add(module)
            # GGUF shapes are innermost first: lora_a [rank, in] is stored as (in, rank).
            ranks[int(tensor.shape[-1])] += 1
            targets[module.removesuffix(".weight").rsplit(".", 1)[-1]] = None
    summary.modules = len(modules)
    summary.ranks = sorted(ranks)
    summary.targets = sorted(targets)
    summary.groups = {"model": len(modules)} if modules else {}
    alpha = _value(reader, "adapter.lora.alpha")
    if isinstance(alpha, int | float) and math.isfinite(alpha):
        summary.alphas = [float(alpha)]
        summary.alpha_source = "adapter.lora.alpha (llama.cpp scales by alpha / rank)"
    else:
        summary.alphas = [float(r) for r in summary.ranks]
        summary.alpha_source = "no adapter.lora.alpha: alpha = rank"
    summary.base_model = f"a {arch} GGUF base (llama-cli -m BASE.gguf --lora {path.name})"
    adapter_type = _value(reader, "adapter.type")
    if adapter_type != "lora":
        summary.notes.append(f"adapter.type is {adapter_type!r}, not 'lora'")
    if not modules:
        summary.notes.append("no LoRA tensors found (.lora_a / .lora_b)")
    name = _value(reader, "general.name")
    summary.made_by = f"GGUF writer (general.name {name})" if name else "GGUF writer"
    return f"GGUF LoRA adapter ({arch}, for llama.cpp --lora)", summary


def _run_notes(folder: Path) -> tuple[str, ...]:
    run = RunFolder(folder)
    record = run.try_json(RunFolder.RECORD) or {}
    notes = []
    if record:
        status = record.get("status", "running or stopped")
        steps = record.get("steps")
        loss = record.get("final_loss")
        bits = [
            f"{steps} steps" if steps is not None else "",
            f"final loss {loss:.4g}" if isinstance(loss, int | float) else "",
        ]
        detail = ", ".join(b for b in bits if b)
        notes.append(
            f"run: {status}" + (f" ({detail})" if detail else "") + f" [{RunFolder.RECORD}]"
        )
    checkpoints = sorted(n for n in run.entries(RunFolder.CHECKPOINTS) if n.startswith("step-"))
    if checkpoints:
        notes.append(f"checkpoints: {len(checkpoints)} (latest {checkpoints[-1]})")
    others = sorted(p.name for p in folder.glob("*.gguf"))
    if others:
        notes.append(f"also exported: {', '.join(others)}")
    return tuple(notes)


def identify(probe: FileProbe) -> FileKind | None:
    """The llm backend's answer to ``lorakit inspect PATH`` (None: not one of its own)."""
    path = probe.path
    if path.is_file() and probe.tensor_names is None:
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                return None
        fmt, summary = _gguf_summary(path, _gguf_reader(path))
        return FileKind(fmt, summary=summary)
    if not path.is_dir():
        return None
    if (path / "adapter" / "adapter_config.json").is_file():
        return FileKind(
            "lorakit run folder (llm)", inspect=path / "adapter", notes=_run_notes(path)
        )
    config = _json(path / "adapter_config.json")
    if config.get("task_type") == "CAUSAL_LM":
        return FileKind("for causal language models (llm backend)", inspect=path)
    return None
