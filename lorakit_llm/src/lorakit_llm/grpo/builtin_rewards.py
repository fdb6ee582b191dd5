"""The rewards lorakit-llm registers: answer match, format (regex, think), length, JSON.

Each factory takes its options (``llm.reward_options.<name>``) and returns
``reward(prompts, completions, rows) -> list[float]``. This module imports nothing heavy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from lorakit.api import UsageError

Reward = Callable[[list[str], list[str], list[dict[str, Any]]], list[float]]

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:\.\d+)?")
#: DeepSeek-R1's format: reasoning in <think>, then the answer.
THINK = r"^\s*<think>.*?</think>\s*\S.*$"


def _last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _tag_content(text: str, tag: str) -> str | None:
    found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.S)
    return found[-1].strip() if found else None


def answer_match(field: str = "answer", mode: str = "exact", tag: str = "answer") -> Reward:
    """1.0 where the completion's answer equals the row's ``field``, else 0.0.

    ``mode``: ``exact`` (the whole completion, stripped), ``number`` (the last number in the
    completion against the field's number), ``tag`` (the content of the last
    ``<tag>...</tag>``)."""
    if mode not in ("exact", "number", "tag"):
        raise UsageError(f"answer_match: mode must be exact, number or tag, not {mode!r}")

    def reward(
        prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float]:
        out = []
        for completion, row in zip(completions, rows, strict=True):
            if field not in row:
                raise KeyError(f"the row has no field {field!r}")
            want = str(row[field]).strip()
            if mode == "number":
                got = _last_number(completion)
                a, b = _number(got or ""), _number(want)
                out.append(1.0 if a is not None and b is not None and a == b else 0.0)
                continue
            text = completion.strip() if mode == "exact" else _tag_content(completion, tag)
            out.append(1.0 if text is not None and text == want else 0.0)
        return out

    return reward


def regex(pattern: str = "", full: bool = True) -> Reward:
    """1.0 where the completion matches ``pattern`` (whole text with ``full``), else 0.0."""
    if not pattern:
        raise UsageError("regex reward: set llm.reward_options.regex.pattern")
    try:
        compiled = re.compile(pattern, re.S)
    except re.error as exc:
        raise UsageError(f"regex reward: bad pattern {pattern!r}: {exc}") from None
    match = compiled.fullmatch if full else compiled.search

    def reward(
        prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float]:
        return [1.0 if match(c) else 0.0 for c in completions]

    return reward


def think_format() -> Reward:
    """1.0 for ``<think>...</think>`` followed by an answer (DeepSeek-R1's format), else 0.0."""
    return regex(THINK)


def length(target: int = 200, unit: str = "chars") -> Reward:
    """``1 - |len - target| / target`` floored at 0: highest at ``target`` characters (or
    words, ``unit: words``)."""
    if target <= 0 or unit not in ("chars", "words"):
        raise UsageError("length reward: target must be > 0 and unit chars or words")

    def reward(
        prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float]:
        sizes = [len(c) if unit == "chars" else len(c.split()) for c in completions]
        return [max(0.0, 1.0 - abs(n - target) / target) for n in sizes]

    return reward


def _json_text(text: str) -> str:
    """The body of a fenced ```json block when there is one, else the text."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    return (fenced.group(1) if fenced else text).strip()


def json_valid(schema: dict[str, Any] | None = None, schema_field: str | None = None) -> Reward:
    """1.0 where the completion parses as JSON (and, with a ``schema`` or a row's
    ``schema_field``, validates against it: needs the ``jsonschema`` package), else 0.0."""
    validator: Any = None
    if schema is not None or schema_field:
        try:
            import jsonschema
        except ImportError:
            raise UsageError(
                "json_valid with a schema needs jsonschema: pip install jsonschema"
            ) from None
        validator = jsonschema

    def reward(
        prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float]:
        out = []
        for completion, row in zip(completions, rows, strict=True):
            try:
                value = json.loads(_json_text(completion))
            except ValueError:
                out.append(0.0)
                continue
            wanted = row.get(schema_field) if schema_field else schema
            if isinstance(wanted, str):
                wanted = json.loads(wanted)
            if validator is None or wanted is None:
                out.append(1.0)
                continue
            try:
                validator.validate(value, wanted)
                out.append(1.0)
            except validator.ValidationError:
                out.append(0.0)
        return out

    return reward


#: (name, description, options) of the built-ins, registered by lorakit_llm.plugin.
BUILTINS = (
    (
        "answer_match",
        "1 when the answer (whole text, last number or <answer> tag) equals a row field",
        ("field", "mode", "tag"),
    ),
    (
        "regex",
        "1 when the completion matches llm.reward_options.regex.pattern",
        ("pattern", "full"),
    ),
    ("think_format", "1 for <think>...</think> then an answer (R1's format)", ()),
    ("length", "closeness of the completion's length to a target", ("target", "unit")),
    (
        "json_valid",
        "1 when the completion is valid JSON (against a schema with jsonschema)",
        ("schema", "schema_field"),
    ),
)
