"""Records → token rows with loss labels, computed once and cached.

A chat record is rendered with the chat template; the assistant turns are found as the
text the template adds between "the conversation so far plus a generation prompt" and
"the conversation including this answer" (answer, end-of-turn token and all). The whole
text is tokenized once with character offsets, and a token is a target when it overlaps
an answer span (``train_on_inputs: false``) or always (``true``). The first token of a
row is never a target, so rows can be packed end to end without one row's last token
predicting the next row's first.

Rows longer than ``max_seq_len`` are truncated (and counted); plain-text documents are cut
into ``max_seq_len`` chunks instead. The result is cached as safetensors under the run's
cache folder, keyed by the data, the tokenizer, the template and these settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.api import DataError, save_safetensors

CACHE_VERSION = 2
IGNORE = -100


@dataclass
class TokenizedData:
    """Rows stored flat: row ``i`` is ``input_ids[offsets[i]:offsets[i+1]]``."""

    input_ids: torch.Tensor  # int32, all rows concatenated
    labels: torch.Tensor  # int32, IGNORE where no loss
    offsets: torch.Tensor  # int64, len rows + 1
    records: int = 0  # records read
    truncated: int = 0  # rows cut at max_seq_len
    dropped: int = 0  # rows left with no target token

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def row(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.input_ids[a:b], self.labels[a:b]

    def target_tokens(self) -> int:
        # The first token of every row is IGNORE, so this is what the loss sums over.
        return int((self.labels != IGNORE).sum())


# -- fingerprints ----------------------------------------------------------------------


def files_fingerprint(files: list[Path]) -> str:
    """sha256 of the data files' names and bytes."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any, template: str) -> str:
    """sha256 of the tokenizer's vocabulary, merges, special tokens and the chat template."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(template.encode())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# -- rendering -------------------------------------------------------------------------


def render(tokenizer: Any, messages: list[dict[str, str]], template: str, prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
    )
    return str(text)


def _template_span(
    tokenizer: Any, messages: list[dict[str, str]], i: int, template: str, full: str
) -> tuple[int, int] | None:
    """Where turn ``i`` sits in ``full``: what it adds after the generation prompt."""
    try:
        before = render(tokenizer, messages[:i], template, prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1], template, prompt=False)
    except Exception:
        return None
    if full.startswith(upto) and upto.startswith(before):
        return len(before), len(upto)
    return None


def render_chat(
    tokenizer: Any, messages: list[dict[str, str]], template: str, source: str = ""
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    try:
        full = render(tokenizer, messages, template, prompt=False)
    except Exception as exc:
        raise DataError(f"the chat template failed on this row: {exc}", where=source) from None
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        span = _template_span(tokenizer, messages, i, template, full)
        if span is not None and span[0] >= cursor:
            spans.append(span)
            cursor = span[1]
            continue
        # A template that rewrites earlier turns: fall back to finding the content itself.
        start = full.find(message["content"], cursor)
        if start < 0:
            raise DataError(
                f"cannot find assistant message {i} in the rendered template", where=source
            )
        cursor = start + len(message["content"])
        spans.append((start, cursor))
    return full, spans


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (control tokens, never plain text)."""
    ids = set(tokenizer.all_special_ids)
    for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            ids.add(int(index))
    return ids


def end_of_turn_ids(tokenizer: Any, template: str) -> list[int]:
    """The special token(s) a template puts right after an assistant message.

    ``<|im_end|>`` for chatml, the EOS for zephyr/alpaca/llama2-style templates: found by
    rendering a short exchange and tokenizing what follows the answer up to the next text.
    """
    answer = "\u2063PONG\u2063"
    messages = [{"role": "user", "content": "PING"}, {"role": "assistant", "content": answer}]
    try:
        text = render(tokenizer, messages, template, prompt=False)
    except Exception:
        return []
    at = text.rfind(answer)
    if at < 0:
        return []
    tail = text[at + len(answer) :]
    specials = special_ids(tokenizer)
    found = []
    for token in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if token in specials:
            found.append(token)
        elif found or tokenizer.decode([token]).strip():
            break
    return found[:1]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS in front of a text it encodes (Llama, Mistral)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def with_bos(tokenizer: Any, text: str) -> str:
    """``text`` starting with the BOS where the model expects one (and it is missing)."""
    if adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
        return tokenizer.bos_token + text
    return text


def seal_row(
    tokenizer: Any, text: str, spans: list[tuple[int, int]], stops: list[str]
) -> tuple[str, list[tuple[int, int]]]:
    """A rendered conversation as the model must see it in training.

    It starts with the BOS where the tokenizer adds one, and every assistant turn ends with
    a token generation stops on (``stops``: the EOS and the template's end-of-turn token);
    a turn that does not (chatml on a vocabulary without ``<|im_end|>``) gets the EOS after
    its text, inside the answer span so the model learns to emit it. The span ends with
    that token: what the template puts after it (a newline) is never generated.
    """
    eos = tokenizer.eos_token
    pieces: list[str] = []
    sealed: list[tuple[int, int]] = []
    shift = cursor = 0
    for a, b in spans:
        body = text[a:b].rstrip()
        if not eos or any(body.endswith(s) for s in stops if s):
            # The stop token is the last target: nothing after it is ever generated.
            sealed.append((a + shift, a + len(body) + shift))
            continue
        end = a + len(body)
        pieces += [text[cursor:end], eos]
        cursor = end
        sealed.append((a + shift, end + shift + len(eos)))
        shift += len(eos)
    text = "".join([*pieces, text[cursor:]])
    bos = with_bos(tokenizer, text)
    if bos is not text:
        grow = len(bos) - len(text)
        sealed = [(a + grow, b + grow) for a, b in sealed]
    return bos, sealed


def stop_strings(tokenizer: Any, template: str) -> list[str]:
    """The EOS and the template's end-of-turn token, as text."""
    ids = end_of_turn_ids(tokenizer, template)
    tokens = [tokenizer.eos_token, *tokenizer.convert_ids_to_tokens(ids)]
    return [t for t in tokens if t]


# -- tokenizing --------------------------------------------------------------------------


def _labels(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]] | None
) -> list[int]:
    """Targets where a token overlaps a span (every token when ``spans`` is None)."""
    labels = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        if spans is None:
            hit = True
        elif end > start:
            hit = any(start < b and end > a for a, b in spans)
        else:
            hit = any(a <= start < b for a, b in spans)
        labels.append(token if hit else IGNORE)
    if labels:
        labels[0] = IGNORE
    return labels


def tokenize_records(
    records: list[dict[str, Any]],
    tokenizer: Any,
    template: str,
    *,
    max_seq_len: int,
    train_on_inputs: bool,
) -> TokenizedData:
    """Tokenize every record (batched, with offsets) into rows with loss labels."""
    eos = tokenizer.eos_token or ""
    stops = stop_strings(tokenizer, template) if template else []
    templated: list[tuple[str, list[tuple[int, int]] | None]] = []  # no special tokens added
    raw: list[tuple[str, list[tuple[int, int]] | None, bool]] = []  # tokenizer adds bos
    for record in records:
        kind = record["kind"]
        if kind == "chat":
            text, spans = render_chat(tokenizer, record["messages"], template, record["source"])
            text, spans = seal_row(tokenizer, text, spans, stops)
            templated.append((text, None if train_on_inputs else spans))
        elif kind == "completion":
            text = record["prompt"] + record["completion"] + eos
            spans = [(len(record["prompt"]), len(text))]
            raw.append((text, None if train_on_inputs else spans, False))
        elif kind == "text":
            raw.append((record["text"] + eos, None, True))
        else:
            raise DataError(f"unknown record kind {kind!r}", where=record.get("source"))

    rows: list[tuple[list[int], list[int]]] = []
    truncated = dropped = 0

    def add(ids: list[int], offsets: list[tuple[int, int]], spans: Any, chunked: bool) -> None:
        nonlocal truncated, dropped
        labels = _labels(ids, offsets, spans)
        if chunked:
            for a in range(0, len(ids), max_seq_len):
                piece_ids, piece_labels = ids[a : a + max_seq_len], labels[a : a + max_seq_len]
                if len(piece_ids) > 1:
                    rows.append((piece_ids, [IGNORE, *piece_labels[1:]]))
            return
        if len(ids) > max_seq_len:
            truncated += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(label == IGNORE for label in labels):
            dropped += 1
            return
        rows.append((ids, labels))

    for batch, special in ((templated, False), (raw, True)):
        if not batch:
            continue
        texts = [item[0] for item in batch]
        encoded = tokenizer(
            texts, add_special_tokens=special, return_offsets_mapping=True, verbose=False
        )
        for i, item in enumerate(batch):
            chunked = len(item) > 2 and bool(item[2])
            add(encoded["input_ids"][i], encoded["offset_mapping"][i], item[1], chunked)

    flat_ids = [t for ids, _ in rows for t in ids]
    flat_labels = [t for _, labels in rows for t in labels]
    offsets = [0]
    for ids, _ in rows:
        offsets.append(offsets[-1] + len(ids))
    return TokenizedData(
        input_ids=torch.tensor(flat_ids, dtype=torch.int32),
        labels=torch.tensor(flat_labels, dtype=torch.int32),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        records=len(records),
        truncated=truncated,
        dropped=dropped,
    )


# -- cache -------------------------------------------------------------------------------


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"tokens-{key}.safetensors"


def save_cached(data: TokenizedData, path: Path) -> None:
    meta = {"records": data.records, "truncated": data.truncated, "dropped": data.dropped}
    save_safetensors(
        {"input_ids": data.input_ids, "labels": data.labels, "offsets": data.offsets},
        path,
        metadata={"lorakit.llm.tokens": json.dumps(meta), "format": "pt"},
    )


def load_cached(path: Path) -> TokenizedData | None:
    """The cached rows at ``path``, or None when missing or unreadable."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["lorakit.llm.tokens"])
            tensors = {k: handle.get_tensor(k) for k in ("input_ids", "labels", "offsets")}
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    return TokenizedData(**tensors, **meta)
