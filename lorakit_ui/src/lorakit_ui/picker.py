"""The new-run page's template picker, in plain words: every installed backend's templates
(``BackendPlugin.template_files``, the ones ``lorakit config init`` offers), grouped by what
they train, each titled and described by its own header comment. Nothing here names a
model: a family or backend added by a package shows up with the words its template gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lorakit.api import LorakitError, get_registries
from lorakit.app import template_text

#: What each task type trains, as the picker's group headings say it.
GROUPS = {"image-generation": "Images", "text-generation": "Text"}
#: A header line's tool prefix (``# lorakit: ``, ``# lorakit-llm: ``), not part of the words.
_PREFIX = re.compile(r"^lorakit[\w-]*:\s*")
#: The longest title taken from the header (else the template's name).
TITLE_LIMIT = 60


@dataclass
class Choice:
    """One template on the picker."""

    backend: str
    template: str
    group: str
    title: str
    words: str


def describe(header: str, name: str) -> tuple[str, str]:
    """(title, words) from a template's first comment lines: its first sentence, split at
    its first colon (else at its first parenthesis or comma, whichever comes first)."""
    sentence = _PREFIX.sub("", header).strip()
    end = re.search(r"\.(\s|$)", sentence)
    sentence = sentence[: end.start() + 1] if end else sentence
    colon = sentence.find(":")
    if 0 < colon <= TITLE_LIMIT:
        return sentence[:colon].strip(), sentence[colon + 1 :].strip()
    found = [(at, mark) for mark in (" (", ",") if 0 < (at := sentence.find(mark)) <= TITLE_LIMIT]
    if found:
        at, mark = min(found)
        return sentence[:at].strip(), sentence[at + (mark == ",") :].strip()
    return name, sentence


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def choices() -> list[Choice]:
    """Every installed backend's templates, images first, in the backends' own order."""
    found: list[Choice] = []
    for entry in get_registries().backends:
        spec: Any = entry.spec
        task = spec.task_types[0] if spec.task_types else ""
        group = GROUPS.get(task, spec.name)
        for name in spec.template_files():
            try:
                title, words = describe(_header(template_text(spec.name, name)), name)
            except LorakitError:
                continue
            found.append(Choice(spec.name, name, group, title, words))
    order = list(GROUPS.values())
    found.sort(key=lambda c: order.index(c.group) if c.group in order else len(order))
    return found


def grouped() -> list[tuple[str, list[Choice]]]:
    out: list[tuple[str, list[Choice]]] = []
    for choice in choices():
        if not out or out[-1][0] != choice.group:
            out.append((choice.group, []))
        out[-1][1].append(choice)
    return out
