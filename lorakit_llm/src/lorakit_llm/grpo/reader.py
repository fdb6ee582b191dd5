"""The ``prompt`` dataset reader: TRL's prompt-only rows, for GRPO.

A row has ``prompt`` (a string, or a list of ``{"role", "content"}`` messages ending with a
user turn) and any other fields the rewards read (``answer``, a JSON schema, ...), in JSONL,
JSON arrays or CSV. Each record is ``{"kind": "prompt", "prompt": [messages], "fields":
{the whole row}, "source": "file:line"}``. This module imports no torch and no transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_llm.preference.reader import _prompt
from lorakit_llm.readers import _rows, first_row

Record = dict[str, Any]
#: Keys that make a row another format's (prompt_completion, preference).
OTHER_FORMATS = ("completion", "chosen", "rejected")


def read_prompt(path: str | Path, system_prompt: str | None = None, **_: Any) -> list[Record]:
    """Every row as a prompt (chat messages) with its fields."""
    return [
        {
            "kind": "prompt",
            "prompt": _prompt(row["prompt"], where, system_prompt),
            "fields": dict(row),
            "source": where,
        }
        for where, row in _rows(path, ("prompt",))
    ]


def detect_prompt(path: str | Path) -> bool:
    row = first_row(path)
    return row is not None and "prompt" in row and not any(k in row for k in OTHER_FORMATS)
