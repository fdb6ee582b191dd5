"""The ``preference`` dataset reader: TRL's prompt / chosen / rejected rows.

Two forms, in JSONL, JSON arrays or CSV (the files ``train_data_dir`` names, as for SFT):

- standard: ``prompt``, ``chosen`` and ``rejected`` are strings. The prompt becomes one user
  turn (after ``llm.system_prompt`` when set) and each answer an assistant turn, so the chat
  template applies as for ``qa`` rows;
- conversational: ``prompt`` is a list of messages (``{"role", "content"}``), ``chosen`` and
  ``rejected`` are lists holding the assistant message (or a single message object).

Each record is ``{"kind": "preference", "prompt": [messages], "chosen": str, "rejected": str,
"source": "file:line"}``. A row that is neither form is a DataError naming file and line.
This module imports no torch and no transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import DataError
from lorakit_llm.readers import ROLES, _rows, _text, _with_system, first_row

Record = dict[str, Any]
KEYS = ("prompt", "chosen", "rejected")


def _prompt(value: Any, where: str, system_prompt: str | None) -> list[dict[str, str]]:
    if isinstance(value, str):
        return _with_system([{"role": "user", "content": value}], system_prompt)
    if not isinstance(value, list) or not value:
        raise DataError("'prompt' must be a string or a non-empty list of messages", where=where)
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"prompt message {i} is not an object", where=where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(
                f"prompt message {i}: unknown role {role!r} (use {', '.join(ROLES)})", where=where
            )
        if not isinstance(content, str):
            raise DataError(f"prompt message {i}: 'content' must be a string", where=where)
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] == "assistant":
        raise DataError("the prompt ends with an assistant message", where=where)
    return messages


def _answer(row: dict[str, Any], key: str, where: str) -> str:
    value = row[key]
    if isinstance(value, str):
        return _text(row, key, where)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role") != "assistant":
            raise DataError(f"'{key}' must be an assistant message", where=where)
        if isinstance(value.get("content"), str):
            return str(value["content"])
    raise DataError(
        f'\'{key}\' must be a string or one assistant message [{{"role": "assistant", '
        f'"content": ...}}]',
        where=where,
    )


def read_preference(path: str | Path, system_prompt: str | None = None, **_: Any) -> list[Record]:
    """Every prompt / chosen / rejected row under ``path`` as a preference record."""
    out = []
    for where, row in _rows(path, KEYS):
        conversational = isinstance(row["prompt"], list)
        prompt = _prompt(row["prompt"], where, None if conversational else system_prompt)
        chosen, rejected = _answer(row, "chosen", where), _answer(row, "rejected", where)
        if not chosen.strip() or not rejected.strip():
            raise DataError("'chosen' and 'rejected' must not be empty", where=where)
        out.append(
            {
                "kind": "preference",
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "source": where,
            }
        )
    return out


def detect_preference(path: str | Path) -> bool:
    row = first_row(path)
    return row is not None and all(k in row for k in KEYS)
