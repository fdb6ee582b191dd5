"""One line of ``lorakit doctor``: a :class:`Check`, and how the lines are printed."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]
MARKS = {"ok": "✓", "warn": "⚠", "fail": "✗"}
ASCII_MARKS = {"ok": "OK", "warn": "WARN", "fail": "FAIL"}


@dataclass
class Check:
    """One line of ``lorakit doctor``."""

    name: str
    status: Status
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def marks() -> dict[str, str]:
    """✓/⚠/✗, or OK/WARN/FAIL where stdout cannot print them."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "".join(MARKS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARKS
    return MARKS


def render(checks: list[Check]) -> list[str]:
    """The lines ``lorakit doctor`` prints."""
    symbols = marks()
    lines = []
    for check in checks:
        lines.append(f"{symbols[check.status]} {check.name}: {check.message}")
        if check.fix and check.status != "ok":
            lines.append(f"    fix: {check.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append(f"{fails} problem(s), {warns} warning(s)")
    return lines
