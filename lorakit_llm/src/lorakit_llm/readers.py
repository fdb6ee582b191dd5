"""Dataset readers for text: JSONL rows (or .txt files) into uniform training records.

``train_data_dir`` is a single file or a folder (every ``.jsonl``, ``.json`` and ``.csv``
in it, sorted by name; the ``text`` reader also takes ``.txt`` files). A ``.json`` file is
one JSON array of objects (the classic ``alpaca_data.json``) or JSON lines; a ``.csv`` file
has a header row naming its columns (``question,answer``, ``instruction,input,output``,
``prompt,completion``, ``text``), so the same readers and the same detection serve it. Each reader returns records of one of three
kinds, which the tokenizer step understands:

- ``{"kind": "chat", "messages": [{"role", "content"}, ...]}``: rendered with the chat
  template; ``qa``, ``alpaca`` and ``chat`` rows become this;
- ``{"kind": "completion", "prompt": str, "completion": str}``: raw text, no template;
- ``{"kind": "text", "text": str}``: raw text, every token is a target.

Every record carries ``source`` (``file:line``; the line where a JSON array's object
starts, or a CSV row's line) so later errors can say where. A line that is not valid JSON,
or lacks the keys, is a :class:`DataError` naming file and line.
This module imports no torch and no transformers.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lorakit.api import DataError

Record = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


ROW_SUFFIXES = (".jsonl", ".json", ".csv")
TEXT_SUFFIX = ".txt"


def _kinds(suffixes: tuple[str, ...]) -> str:
    return ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]


def data_files(path: str | Path, suffixes: tuple[str, ...] = ROW_SUFFIXES) -> list[Path]:
    """The data files at ``path``: the file itself, or the folder's files with ``suffixes``.

    A file whose extension is not one of ``suffixes`` (``.tsv``, ``.parquet``) is refused,
    naming the supported ones; a file without an extension is read as JSON lines.
    """
    path = Path(path).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix and suffix not in suffixes:
            raise DataError(
                f"{suffix} files are not supported; the data must be {_kinds(ROW_SUFFIXES)} "
                f"(or {TEXT_SUFFIX} for llm.dataset_format: text)",
                where=path,
            )
        return [path]
    if not path.is_dir():
        raise DataError("no such file or folder", where=path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        others = sorted({p.suffix.lower() for p in path.iterdir() if p.is_file() and p.suffix})
        seen = f" (found only {', '.join(others)}, which are not supported)" if others else ""
        raise DataError(f"no {_kinds(suffixes)} files in this folder{seen}", where=path)
    return files


def iter_jsonl(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; a broken line is a DataError."""
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"not UTF-8 text (byte {exc.start})", where=f"{file}:{number}"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"invalid JSON: {exc.msg} (column {exc.colno})", where=f"{file}:{number}"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"expected a JSON object, got {type(row).__name__}", where=f"{file}:{number}"
                )
            yield number, row


def _read_text(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text (byte {exc.start})", where=f"{file}:{line}") from None


def iter_json_array(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every object of a file holding one JSON array."""
    text = _read_text(file)
    decoder = json.JSONDecoder()
    at = len(text) - len(text.lstrip())
    if not text.startswith("[", at):
        yield from iter_jsonl(file)  # JSON lines under a .json name
        return

    def where(offset: int) -> str:
        return f"{file}:{text.count(chr(10), 0, offset) + 1}"

    at += 1
    first = True
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if text.startswith("]", at):
            return
        if not first:
            if not text.startswith(",", at):
                raise DataError("invalid JSON: expected ',' or ']' between items", where=where(at))
            at += 1
            while at < len(text) and text[at].isspace():
                at += 1
        first = False
        if at >= len(text):
            raise DataError("invalid JSON: the array is not closed with ']'", where=where(at))
        try:
            row, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", where=f"{file}:{exc.lineno}"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", where=where(at))
        yield text.count("\n", 0, at) + 1, row
        at = end


def iter_csv(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every data row of a CSV file with a header row.

    Column names are matched without case or surrounding spaces; empty cells of optional
    columns (alpaca's ``input``) read as empty strings.
    """
    reader = csv.reader(io.StringIO(_read_text(file), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"invalid CSV: {exc}", where=f"{file}:1") from None
    names = [h.strip().lower() for h in header]
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"invalid CSV: {exc}", where=f"{file}:{start}") from None
        if any(c.strip() for c in cells):
            if len(cells) > len(names):
                raise DataError(
                    f"{len(cells)} cells but the header names {len(names)} columns",
                    where=f"{file}:{start}",
                )
            yield start, dict(zip(names, cells, strict=False))
        start = reader.line_num + 1


def iter_rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``.jsonl``, ``.json`` (array) or ``.csv`` file, with their line numbers."""
    suffix = file.suffix.lower()
    if suffix == ".json":
        return iter_json_array(file)
    if suffix == ".csv":
        return iter_csv(file)
    return iter_jsonl(file)


def first_row(path: str | Path) -> dict[str, Any] | None:
    """The first row of the first data file (None for text-only folders)."""
    try:
        files = data_files(path, (*ROW_SUFFIXES, TEXT_SUFFIX))
    except DataError:
        return None
    for file in files:
        if file.suffix.lower() == TEXT_SUFFIX:
            continue
        for _, row in iter_rows(file):
            return row
    return None


def _text(row: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else type(value).__name__
        raise DataError(f"'{key}' must be a string ({got})", where=where)
    return value


def _rows(path: str | Path, need: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for file in data_files(path):
        for number, row in iter_rows(file):
            where = f"{file}:{number}"
            missing = [k for k in need if k not in row]
            if missing:
                keys = ", ".join(sorted(row)) or "none"
                raise DataError(f"missing key {missing[0]!r} (row has: {keys})", where=where)
            yield where, row


def _with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + messages


# -- readers -------------------------------------------------------------------------


def read_qa(path: str | Path, system_prompt: str | None = None, **_: Any) -> list[Record]:
    """``{"question": ..., "answer": ...}`` rows → one user/assistant exchange each."""
    out = []
    for where, row in _rows(path, ("question", "answer")):
        messages = [
            {"role": "user", "content": _text(row, "question", where)},
            {"role": "assistant", "content": _text(row, "answer", where)},
        ]
        out.append(
            {"kind": "chat", "messages": _with_system(messages, system_prompt), "source": where}
        )
    return out


def read_alpaca(path: str | Path, system_prompt: str | None = None, **_: Any) -> list[Record]:
    """``{"instruction", "input" (optional), "output"}`` rows → user/assistant exchanges.

    The user turn is the instruction, then a blank line and the input when there is one.
    """
    out = []
    for where, row in _rows(path, ("instruction", "output")):
        instruction = _text(row, "instruction", where)
        extra = _text(row, "input", where, optional=True)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(row, "output", where)},
        ]
        out.append(
            {"kind": "chat", "messages": _with_system(messages, system_prompt), "source": where}
        )
    return out


def read_prompt_completion(path: str | Path, **_: Any) -> list[Record]:
    """``{"prompt", "completion"}`` rows: raw text ``prompt + completion``, no chat template."""
    return [
        {
            "kind": "completion",
            "prompt": _text(row, "prompt", where),
            "completion": _text(row, "completion", where),
            "source": where,
        }
        for where, row in _rows(path, ("prompt", "completion"))
    ]


def read_chat(path: str | Path, **_: Any) -> list[Record]:
    """``{"messages": [{"role", "content"}, ...]}`` rows (or ShareGPT ``conversations``)."""
    out = []
    for file in data_files(path):
        for number, row in iter_rows(file):
            where = f"{file}:{number}"
            out.append({"kind": "chat", "messages": _messages(row, where), "source": where})
    return out


def _messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    if "messages" in row:
        raw, role_key, content_key, roles = row["messages"], "role", "content", None
    elif "conversations" in row:
        raw, role_key, content_key, roles = row["conversations"], "from", "value", SHAREGPT_ROLES
    else:
        raise DataError("missing key 'messages'", where=where)
    if not isinstance(raw, list) or not raw:
        raise DataError("'messages' must be a non-empty list", where=where)
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise DataError(f"message {i} is not an object", where=where)
        role, content = message.get(role_key), message.get(content_key)
        role = roles.get(role, role) if roles is not None and isinstance(role, str) else role
        if role not in ROLES:
            raise DataError(
                f"message {i}: unknown role {role!r} (use {', '.join(ROLES)})", where=where
            )
        if not isinstance(content, str):
            raise DataError(f"message {i}: '{content_key}' must be a string", where=where)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant message to learn", where=where)
    return messages


def read_text(path: str | Path, **_: Any) -> list[Record]:
    """Plain text: every ``.txt`` file is one document; JSONL rows need a ``text`` key."""
    out: list[Record] = []
    for file in data_files(path, (*ROW_SUFFIXES, TEXT_SUFFIX)):
        if file.suffix.lower() == TEXT_SUFFIX:
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not UTF-8 text (byte {exc.start})", where=file) from None
            if text.strip():
                out.append({"kind": "text", "text": text, "source": str(file)})
            continue
        for number, row in iter_rows(file):
            where = f"{file}:{number}"
            out.append({"kind": "text", "text": _text(row, "text", where), "source": where})
    return out


# -- detection (dataset_format: auto) ------------------------------------------------


def _has(*keys: str) -> Callable[[str | Path], bool]:
    def detect(path: str | Path) -> bool:
        row = first_row(path)
        return row is not None and all(k in row for k in keys)

    return detect


detect_qa = _has("question", "answer")
detect_alpaca = _has("instruction", "output")
detect_prompt_completion = _has("prompt", "completion")


def detect_chat(path: str | Path) -> bool:
    row = first_row(path)
    return row is not None and ("messages" in row or "conversations" in row)


def detect_text(path: str | Path) -> bool:
    try:
        files = data_files(path, (*ROW_SUFFIXES, TEXT_SUFFIX))
    except DataError:
        return False
    if any(f.suffix.lower() == TEXT_SUFFIX for f in files):
        return True
    row = first_row(path)
    return row is not None and "text" in row


def sniff(path: str | Path) -> None:
    """Read the first row, so a broken first line is reported before detection."""
    first_row(path)
