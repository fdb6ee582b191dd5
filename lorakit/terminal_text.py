"""Text read from files, shown as text: a terminal never obeys what a file says.

Safetensors metadata, captions, a changelog from the package index or a chat transcript are
written by someone else. An ANSI escape sequence in them could recolour, hide or rewrite
what the terminal shows, ``\\r`` could overwrite a line and a bidirectional override could
reorder it. :func:`printable` writes every such character as a visible escape (``\\x1b``,
``\\r``, ``\\u202e``); :func:`rich_text` also escapes rich's markup (``[red]``) for text
printed through rich. Every terminal output of file content goes through one of them.
"""

from __future__ import annotations

import re

#: C0 and C1 control characters, DEL, line/paragraph separators and the bidirectional
#: embeddings, overrides and isolates (what can move, hide or recolour text on a terminal).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, newlines: bool = False) -> str:
    """``text`` with every control character written as a visible escape.

    ``newlines=True`` keeps ``\\n`` (and tabs) for text shown as several lines (a
    changelog); everything else that steers a terminal is escaped either way.
    """
    text = str(text)
    if not newlines:
        return _CONTROL.sub(_escape, text)
    return "\n".join(
        _CONTROL.sub(lambda m: m.group() if m.group() == "\t" else _escape(m), line)
        for line in text.split("\n")
    )


def rich_text(text: object, *, newlines: bool = False) -> str:
    """:func:`printable`, with rich's markup escaped too: for ``console.print``."""
    from rich.markup import escape

    return escape(printable(text, newlines=newlines))
