"""Whether a config's ``base_model`` and ``train_data_dir`` are the ``llm`` backend's to read.

Asked when a config names no ``task_type`` and several backends are installed. Local files
only, and only their first bytes: a GGUF or GGML magic, a model folder's ``config.json``, the
data files' extensions. A hub id is never looked up.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.api import is_image_name
from lorakit_llm.loading import file_magic
from lorakit_llm.readers import ROW_SUFFIXES, TEXT_SUFFIX

#: The largest config.json read to tell a causal language model from something else.
CONFIG_LIMIT = 1 << 20


def reads_model(base_model: str) -> str | None:
    """``a GGUF file``, ``an old GGML file``, ``a causal-LM folder (LlamaForCausalLM)``."""
    path = Path(base_model).expanduser()
    if path.is_file():
        magic = file_magic(path)
        if magic == "gguf":
            return "a GGUF file"
        return f"an old GGML file ({magic})" if magic else None
    if not path.is_dir():
        return None
    if len(list(path.glob("*.gguf"))) == 1 and not (path / "config.json").is_file():
        return "a folder holding a GGUF file"
    architectures = _architectures(path / "config.json")
    causal = [a for a in architectures if a.endswith(("ForCausalLM", "LMHeadModel"))]
    return f"a causal-LM folder ({causal[0]})" if causal else None


def _architectures(config: Path) -> list[str]:
    try:
        if not config.is_file() or config.stat().st_size > CONFIG_LIMIT:
            return []
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    names = data.get("architectures") if isinstance(data, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def reads_data(train_data_dir: str) -> str | None:
    """``JSONL rows``, ``a folder of CSV files``; None: no text data there (or images)."""
    path = Path(train_data_dir).expanduser()
    suffixes = (*ROW_SUFFIXES, TEXT_SUFFIX)
    if path.is_file():
        suffix = path.suffix.lower()
        return f"{suffix[1:].upper()} rows" if suffix in suffixes else None
    if not path.is_dir():
        return None
    files = [p for p in sorted(path.iterdir())[:4096] if p.is_file()]
    if any(is_image_name(p.name) for p in files):
        return None  # captions beside images are an image data set
    found = sorted({p.suffix.lower() for p in files if p.suffix.lower() in suffixes})
    if not found:
        return None
    return f"a folder of {'/'.join(s[1:].upper() for s in found)} files"
