"""The ``dose_in_range`` reward: a medical answer's dose checked against the row's range.

A row carries ``min_dose`` and ``max_dose`` (numbers, in ``unit``); a completion earns 1.0
when the last ``<number> <unit>`` it mentions lies in that range, 0.0 otherwise (no dose,
or out of range). A row without the two fields is an error, which lorakit reports in one
line naming the reward and the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Reward = Callable[[list[str], list[str], list[dict[str, Any]]], list[float]]


def last_dose(text: str, unit: str = "mg") -> float | None:
    """The last ``<number> <unit>`` of ``text`` (``1,000 mg``, ``2.5mg``), or None."""
    found = re.findall(rf"(\d+(?:,\d{{3}})*(?:\.\d+)?)\s*{re.escape(unit)}\b", text)
    return float(found[-1].replace(",", "")) if found else None


def dose_in_range(unit: str = "mg") -> Reward:
    def reward(
        prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float]:
        out = []
        for completion, row in zip(completions, rows, strict=True):
            low, high = float(row["min_dose"]), float(row["max_dose"])
            dose = last_dose(completion, unit)
            out.append(1.0 if dose is not None and low <= dose <= high else 0.0)
        return out

    return reward
