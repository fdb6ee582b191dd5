"""Preference records → token rows, pairs → batches.

A pair is two rows that share the prompt: ``prompt + chosen`` and ``prompt + rejected``,
each rendered with the chat template and sealed as SFT rows are (BOS where the tokenizer
adds one, the answer ending with the token generation stops on). The labels mark the last
assistant answer only, so log-probabilities cover the answer tokens and the stop token.

A batch of ``batch_size`` pairs is one forward: the chosen rows then the rejected rows,
laid out by SFT's :class:`~lorakit_llm.data.Collator` (padded, or packed without padding),
with ``sequence`` telling which of the ``2 × pairs`` rows each token belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lorakit.api import DataError
from lorakit_llm.data import Collator
from lorakit_llm.tokenize import (
    IGNORE,
    TokenizedData,
    _labels,
    render_chat,
    seal_row,
    stop_strings,
)

SIDES = ("chosen", "rejected")


@dataclass
class PairData:
    """Aligned rows: pair ``i`` is ``chosen.row(i)`` and ``rejected.row(i)``."""

    chosen: TokenizedData
    rejected: TokenizedData

    def __len__(self) -> int:
        return len(self.chosen)

    def lengths(self) -> list[int]:
        return [a + b for a, b in zip(self.chosen.lengths(), self.rejected.lengths(), strict=True)]


def pair_texts(
    tokenizer: Any, record: dict[str, Any], template: str, stops: list[str]
) -> dict[str, tuple[str, tuple[int, int]]]:
    """Per side, the sealed text and the character span of its answer (with the stop token)."""
    out = {}
    for side in SIDES:
        messages = [*record["prompt"], {"role": "assistant", "content": record[side]}]
        text, spans = render_chat(tokenizer, messages, template, record["source"])
        text, spans = seal_row(tokenizer, text, spans[-1:], stops)
        out[side] = (text, spans[0])
    return out


def _flat(rows: list[tuple[list[int], list[int]]], records: int, truncated: int) -> TokenizedData:
    offsets = [0]
    for ids, _ in rows:
        offsets.append(offsets[-1] + len(ids))
    return TokenizedData(
        input_ids=torch.tensor([t for ids, _ in rows for t in ids], dtype=torch.int32),
        labels=torch.tensor([t for _, labels in rows for t in labels], dtype=torch.int32),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        records=records,
        truncated=truncated,
        dropped=records - len(rows),
    )


def tokenize_pairs(
    records: list[dict[str, Any]], tokenizer: Any, template: str, *, max_seq_len: int
) -> PairData:
    """Tokenize every pair; a row longer than ``max_seq_len`` is truncated (counted), and a
    pair left without an answer token on either side is skipped (counted as dropped)."""
    if not template:
        raise DataError("preference tuning needs a chat template (set llm.chat_template)")
    stops = stop_strings(tokenizer, template)
    texts = [pair_texts(tokenizer, r, template, stops) for r in records]
    encoded = {
        side: tokenizer(
            [t[side][0] for t in texts],
            add_special_tokens=False,
            return_offsets_mapping=True,
            verbose=False,
        )
        for side in SIDES
    }
    kept: dict[str, list[tuple[list[int], list[int]]]] = {side: [] for side in SIDES}
    truncated = 0
    for i, item in enumerate(texts):
        pair = {}
        for side in SIDES:
            ids = encoded[side]["input_ids"][i]
            labels = _labels(ids, encoded[side]["offset_mapping"][i], [item[side][1]])
            if len(ids) > max_seq_len:
                truncated += 1
                ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            pair[side] = (ids, labels)
        if all(any(x != IGNORE for x in pair[side][1]) for side in SIDES):
            for side in SIDES:
                kept[side].append(pair[side])
    return PairData(*(_flat(kept[side], len(records), truncated) for side in SIDES))


class PairDataset(torch.utils.data.Dataset):
    """One item per pair (of ``rows``, default all), with its reference log-probs if known."""

    def __init__(
        self, data: PairData, rows: list[int] | None = None, ref: torch.Tensor | None = None
    ) -> None:
        self.data = data
        self.rows = list(range(len(data))) if rows is None else rows
        lengths = data.lengths()
        self.lengths = [lengths[i] for i in self.rows]
        self.ref = ref  # (pairs, 2): chosen, rejected; indexed by the pair's row

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        item = {"row": torch.tensor(row)}
        for side in SIDES:
            ids, labels = getattr(self.data, side).row(row)
            item[f"{side}_ids"], item[f"{side}_labels"] = ids.long(), labels.long()
        if self.ref is not None:
            item["ref_logps"] = self.ref[row]
        return item


class PairCollator:
    """``batch_size`` pairs → one batch of ``2 × pairs`` rows (chosen first, then rejected)."""

    def __init__(self, pad_id: int, layout: str = "padded") -> None:
        self.collator = Collator(pad_id, layout)

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        rows = [
            {"input_ids": item[f"{side}_ids"], "labels": item[f"{side}_labels"]}
            for side in SIDES
            for item in items
        ]
        batch = self.collator(rows)
        # The same layout again, with each row's index as its label: the token → row map.
        index = [
            {"input_ids": r["input_ids"], "labels": torch.full_like(r["labels"], j)}
            for j, r in enumerate(rows)
        ]
        batch["sequence"] = self.collator(index)["labels"]
        batch["num_rows"] = torch.tensor(len(items))
        batch["row"] = torch.stack([item["row"] for item in items])
        if "ref_logps" in items[0]:
            batch["ref_logps"] = torch.stack([item["ref_logps"] for item in items])
        return batch
