"""Which reader reads the training data: ``llm.dataset_format``, or detection (``auto``).

Detection reads the first row of every data file (never more) and asks each text reader's
``detect`` in :data:`DETECTION_ORDER` (readers registered by plugins come after), so a reader
added by a plugin or beside :mod:`lorakit_llm.readers` takes part by registering a
``DatasetReaderSpec`` with ``modality="text"`` and a ``detect`` (and, for a better message,
an entry in :data:`FORMAT_KEYS`). Every file of a folder must be of the format its first
non-empty file decides; the errors say what was found and which file decided:

- an unsupported extension (``.tsv``, ``.parquet``) names the supported ones;
- an empty file (or a folder of empty files) says it is empty;
- rows no format reads list the keys found and each format's keys;
- a folder mixing formats names the file that decided the format and the one that differs.

This module imports no torch and no transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import DataError, UsageError
from lorakit_llm.readers import ROW_SUFFIXES, TEXT_SUFFIX, data_files, iter_rows

#: The order ``dataset_format: auto`` tries the readers in (the first that accepts wins).
DETECTION_ORDER = ["preference", "chat", "alpaca", "qa", "prompt_completion", "prompt", "text"]
#: The keys of each format's rows, as error messages list them.
FORMAT_KEYS = {
    "preference": "prompt, chosen, rejected",
    "chat": "messages, or ShareGPT's conversations",
    "alpaca": "instruction, output, optional input",
    "qa": "question, answer",
    "prompt_completion": "prompt, completion",
    "prompt": "prompt (and fields for GRPO rewards)",
    "text": "text, or .txt files",
}


def _candidates(readers: Any) -> list[tuple[str, Any]]:
    names = [n for n in DETECTION_ORDER if n in readers]
    names += sorted(e.spec.name for e in readers if e.spec.name not in DETECTION_ORDER)
    out = []
    for name in names:
        spec = readers.get(name)
        if spec.modality == "text" and spec.detect is not None:
            out.append((name, spec))
    return out


def _first_row(file: Path) -> tuple[int, dict[str, Any]] | None:
    for number, row in iter_rows(file):
        return number, row
    return None


def formats_text(readers: Any) -> str:
    """``chat (messages ...); alpaca (instruction, ...); ...`` for the installed readers."""
    parts = []
    for name, spec in _candidates(readers):
        keys = FORMAT_KEYS.get(name) or spec.description or "?"
        parts.append(f"{name} ({keys})")
    return "; ".join(parts)


def _detect_file(file: Path, candidates: list[tuple[str, Any]]) -> str | None:
    return next((name for name, spec in candidates if spec.detect(file)), None)


def choose_reader(path: str | Path, readers: Any, name: str = "auto") -> tuple[str, Any]:
    """``(format name, reader spec)`` for the data at ``path``; one-line DataErrors."""
    if name != "auto":
        spec = readers.get(name)
        if spec.modality != "text":
            raise UsageError(f"llm.dataset_format: reader '{name}' does not read text")
        return name, spec
    candidates = _candidates(readers)
    files = data_files(path, (*ROW_SUFFIXES, TEXT_SUFFIX))
    decided: tuple[str, Path] | None = None
    for file in files:
        if file.suffix.lower() == TEXT_SUFFIX:
            found: str | None = "text" if file.read_bytes().strip() else None
            if found is None:
                continue
        else:
            first = _first_row(file)
            if first is None:
                continue
            found = _detect_file(file, candidates)
            if found is None:
                number, row = first
                keys = ", ".join(sorted(map(str, row))) or "none"
                raise DataError(
                    f"cannot tell the data format: the rows have the keys {keys}, which no "
                    f"format reads; the formats and their keys: {formats_text(readers)}; "
                    f"rename the keys or set llm.dataset_format",
                    where=f"{file}:{number}",
                )
        if decided is None:
            decided = (found, file)
        elif found != decided[0]:
            raise DataError(
                f"rows of the {found} format, but this folder's format is {decided[0]}, decided "
                f"by {decided[1].name} (the first file); keep one format per folder, or set "
                f"llm.dataset_format",
                where=file,
            )
    if decided is None:
        what = "the file is empty" if len(files) == 1 else "every data file in it is empty"
        raise DataError(f"{what}: no rows to train on", where=path)
    return decided[0], readers.get(decided[0])
