"""Tokenization: the answer-only mask against the chat template, truncation, the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lorakit_llm.chat_templates import BUILTIN, resolve_template
from lorakit_llm.tokenize import IGNORE, tokenize_records


@pytest.fixture(scope="module")
def tokenizer(assets: dict[str, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets["model"])


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {
        "kind": "chat",
        "messages": [{"role": r, "content": c} for r, c in turns],
        "source": "test:1",
    }


def template_ids(tokenizer: Any, messages: list[dict[str, str]], prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
    return list(out["input_ids"])


def test_answer_only_mask_token_by_token(tokenizer: Any) -> None:
    record = chat(
        ("system", "Be brief."),
        ("user", "What is the capital of Peru?"),
        ("assistant", "Lima."),
        ("user", "And of Chile?"),
        ("assistant", "Santiago."),
    )
    messages = record["messages"]
    data = tokenize_records(
        [record], tokenizer, tokenizer.chat_template, max_seq_len=256, train_on_inputs=False
    )
    ids, labels = (t.tolist() for t in data.row(0))
    assert ids == template_ids(tokenizer, messages)  # what the model's own template gives

    expected = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(template_ids(tokenizer, messages[:i], prompt=True))
            end = len(template_ids(tokenizer, messages[: i + 1])) - 1  # not the "\n" after </s>
            assert ids[:start] == template_ids(tokenizer, messages[:i], prompt=True)
            expected[start:end] = ids[start:end]
    assert labels == expected
    targets = [
        tokenizer.decode([t]) for t, label in zip(ids, labels, strict=True) if label != IGNORE
    ]
    assert "".join(targets) == "Lima.</s>Santiago.</s>"


def test_train_on_inputs_targets_every_token_but_the_first(tokenizer: Any) -> None:
    record = chat(("user", "What is 2 plus 2?"), ("assistant", "4."))
    data = tokenize_records(
        [record], tokenizer, tokenizer.chat_template, max_seq_len=256, train_on_inputs=True
    )
    ids, labels = (t.tolist() for t in data.row(0))
    assert labels == [IGNORE, *ids[1:]]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_templates_mask_only_the_answers(tokenizer: Any, name: str) -> None:
    template, _ = resolve_template(name, tokenizer)
    record = chat(
        ("system", "Be brief."),
        ("user", "What is the capital of Peru?"),
        ("assistant", "Lima."),
        ("user", "And of Chile?"),
        ("assistant", "Santiago."),
    )
    data = tokenize_records([record], tokenizer, template, max_seq_len=256, train_on_inputs=False)
    ids, labels = data.row(0)
    target_text = tokenizer.decode(ids[labels != IGNORE])
    assert "Lima." in target_text and "Santiago." in target_text
    assert "Peru" not in target_text and "Chile" not in target_text and "brief" not in target_text


def test_prompt_completion_and_text(tokenizer: Any) -> None:
    records = [
        {
            "kind": "completion",
            "prompt": "Q: What is 2 plus 2?\nA:",
            "completion": " 4.",
            "source": "t:1",
        },
        {
            "kind": "text",
            "text": "The quick brown fox jumps over the lazy dog. " * 6,
            "source": "t:2",
        },
    ]
    data = tokenize_records(records, tokenizer, "", max_seq_len=16, train_on_inputs=False)
    ids, labels = data.row(0)
    assert tokenizer.decode(ids[labels != IGNORE]) == " 4.</s>"
    # The long document is cut into max_seq_len chunks, not truncated.
    assert len(data) > 2 and max(data.lengths()) <= 16 and data.truncated == 0
    for i in range(1, len(data)):
        chunk_ids, chunk_labels = data.row(i)
        assert chunk_labels[0] == IGNORE and torch.equal(chunk_labels[1:], chunk_ids[1:])


def test_truncation_is_counted(tokenizer: Any) -> None:
    records = [
        chat(("user", "What is the capital of France?"), ("assistant", "Paris.")),
        chat(("user", "Hi " * 40), ("assistant", "Hello.")),
        chat(("user", "Hi " * 5), ("assistant", "Hello " * 40)),
    ]
    data = tokenize_records(
        records, tokenizer, tokenizer.chat_template, max_seq_len=24, train_on_inputs=False
    )
    # Row 2 lost its whole answer (skipped); row 3 keeps part of its answer.
    assert (data.records, data.truncated, data.dropped, len(data)) == (3, 2, 1, 2)
    assert max(data.lengths()) <= 24
