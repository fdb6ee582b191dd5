"""Preference pairs for the DPO / ORPO / SimPO tests: short dosed answers vs long vague ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DRUGS = (
    ("paracetamol", "500 mg every 6 h"),
    ("ibuprofen", "400 mg every 8 h"),
    ("amoxicillin", "500 mg every 8 h"),
    ("aspirin", "300 mg every 6 h"),
    ("naproxen", "250 mg every 12 h"),
    ("cetirizine", "10 mg once a day"),
    ("loratadine", "10 mg once a day"),
    ("omeprazole", "20 mg once a day"),
    ("metformin", "500 mg twice a day"),
    ("codeine", "30 mg every 6 h"),
    ("diclofenac", "50 mg every 8 h"),
    ("ranitidine", "150 mg twice a day"),
)
VAGUE = "It depends on many things and you should ask someone who knows more about it."


def preference_rows(n: int = 12, *, conversational: bool = False) -> list[dict[str, Any]]:
    """``n`` pairs: chosen is the short answer with the dose, rejected a long vague one."""
    rows = []
    for i in range(n):
        drug, dose = DRUGS[i % len(DRUGS)]
        prompt = f"What is the adult dose of {drug}?"
        chosen, rejected = f"{dose}.", VAGUE
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
