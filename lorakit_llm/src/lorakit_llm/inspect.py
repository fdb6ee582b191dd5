"""``lorakit ui``'s dataset view of a text run: each row as training reads it.

The format is detected and the rows read by the same readers as ``lorakit train``
(:func:`lorakit_llm.formats.choose_reader`); a chat row is rendered through the run's chat
template (:func:`lorakit_llm.tokenize.render_chat`) and counted with the base model's
tokenizer, read from local files only (a hub id is not fetched: rows are shown without
the template and without token counts).
"""

from __future__ import annotations

import json
from typing import Any

from lorakit.api import DataReport, DataRow, LorakitError

#: How many of the longest rows are kept beyond the first ``limit``.
LONGEST = 5


def _tokenizer(base_model: str) -> tuple[Any, str | None]:
    """(tokenizer or None, why not)."""
    from lorakit_llm.loading import load_tokenizer, resolve_base

    try:
        source = resolve_base(base_model)
        if source.hub:
            return None, "the base model is a hub id: token counts need it on this machine"
        return load_tokenizer(source), None
    except LorakitError as exc:
        return None, f"no tokenizer ({exc.format()})"


def _render(record: dict[str, Any], tokenizer: Any, template: str) -> tuple[str, bool]:
    """(the row's text as trained, whether the template rendered it)."""
    from lorakit_llm.tokenize import render_chat

    kind = record.get("kind")
    if kind == "chat" and tokenizer is not None and template:
        return render_chat(tokenizer, record["messages"], template, record["source"])[0], True
    if kind == "chat":
        return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"]), False
    if kind == "completion":
        return record["prompt"] + record["completion"], False
    if kind == "text":
        return str(record["text"]), False
    shown = {k: v for k, v in record.items() if k not in ("kind", "source")}
    return json.dumps(shown, ensure_ascii=False, indent=1), False


def inspect_text(config: Any, registries: Any, limit: int) -> DataReport:
    """The rows of ``config``'s data (the first ``limit`` and the longest), rendered."""
    from lorakit_llm.chat_templates import resolve_template
    from lorakit_llm.formats import choose_reader

    train, section = config.train, config.section
    name, reader = choose_reader(
        train.train_data_dir, registries.dataset_readers, section.dataset_format
    )
    records = reader.factory(train.train_data_dir, system_prompt=section.system_prompt)
    report = DataReport(
        kind="text",
        source=str(train.train_data_dir),
        format=name,
        total=len(records),
        resolution=section.max_seq_len,
    )
    tokenizer, why = _tokenizer(train.base_model)
    template = ""
    if tokenizer is not None:
        template, report.template = resolve_template(section.chat_template, tokenizer)
    if why:
        report.warnings.append(why)
    rows: list[DataRow] = []
    for record in records:
        try:
            text, templated = _render(record, tokenizer, template)
        except LorakitError as exc:
            rows.append(DataRow(name=str(record.get("source", "")), text="", notes=[exc.format()]))
            continue
        row = DataRow(name=str(record.get("source", "")), text=text)
        if tokenizer is not None:
            row.tokens = len(tokenizer(text, add_special_tokens=not templated)["input_ids"])
            if row.tokens > section.max_seq_len:
                row.notes.append(
                    f"{row.tokens} tokens: cut to llm.max_seq_len {section.max_seq_len}"
                )
        rows.append(row)
    longest = sorted(range(len(rows)), key=lambda i: -(rows[i].tokens or len(rows[i].text)))
    keep = sorted({*range(min(limit, len(rows))), *longest[:LONGEST]})
    report.rows = [rows[i] for i in keep]
    cut = sum(1 for row in rows if row.notes)
    if cut:
        report.warnings.append(f"{cut} row(s) have a problem (see their notes)")
    return report
