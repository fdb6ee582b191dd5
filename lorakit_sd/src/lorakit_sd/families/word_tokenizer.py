"""A tiny word-level tokenizer that splits text as Qwen's byte-level BPE does at the places
the Qwen-based image pipelines count on (stand-ins for tests and demos).

Qwen2 / Qwen3 tokenizers keep ``\\n`` as its own token and the chat markers
(``<|im_start|>``, ``<|im_end|>``) as single special tokens; a pipeline that drops a fixed
number of prompt-template tokens (Qwen-Image drops 34) needs a tokenizer that splits its
template the same way. This one knows the corpus's and the given templates' words, splits
on spaces, keeps newlines and punctuation as pieces, and maps anything else to ``<unk>``.
"""

from __future__ import annotations

import re
from typing import Any

from lorakit_sd.testing import CORPUS

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def words(texts: list[str]) -> list[str]:
    """The word-level pieces of ``texts`` (words, punctuation, newlines), first seen first."""
    seen: dict[str, None] = {}
    for text in texts:
        for special in SPECIALS:
            text = text.replace(special, " ")
        for piece in re.findall(r"\w+|[^\w\s]|\n", text):
            seen.setdefault(piece, None)
    return list(seen)


def word_tokenizer(templates: tuple[str, ...] = (), chat_template: str | None = None) -> Any:
    """The fast tokenizer over the corpus and ``templates`` (pad ``<|endoftext|>``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for piece in words([*CORPUS, *templates]):
        vocab.setdefault(piece, len(vocab))
    for char in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(char, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), "removed"),
            pre_tokenizers.Split(Regex(r"\n"), "isolated"),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    made = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template is not None:
        made.chat_template = chat_template
    return made
