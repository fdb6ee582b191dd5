"""Tiny random-weight CLIP and BLIP models, built offline, for tests and the demo.

They load through the same ``from_pretrained`` calls as the real models, so
``--option model=FOLDER`` runs the ``clip`` and ``blip`` labelers end to end without a
download. Their captions and tags are meaningless (the weights are random) but
deterministic: the same seed builds the same bytes.

The CLIP tokenizer is a byte-level BPE like CLIP's own: the 256 byte symbols, the same with
the end-of-word mark ``</w>``, merges learned here from a handful of sentences, then
``<|startoftext|>`` and ``<|endoftext|>``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Sentences the tiny tokenizers learn their merges and words from.
SENTENCES = (
    "a photo of a red square on a white background",
    "a photo of a blue circle on a black background",
    "a drawing of a green triangle",
    "a painting of a yellow house near the sea",
    "a close up photo of a cat sitting on a sofa",
    "a dog running in the park at night",
    "a portrait of a person smiling in the sun",
    "a cartoon mascot with a big smile",
)
END_OF_WORD = "</w>"


def byte_symbols() -> list[str]:
    """The printable character standing for each byte 0..255 in a byte-level BPE.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are
    shifted to code points from 256 up, in byte order, so every symbol is visible.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def learn_merges(sentences: Iterable[str], count: int) -> list[tuple[str, str]]:
    """Learn ``count`` BPE merges (most frequent adjacent pair first) from ``sentences``."""
    table = byte_symbols()
    words: Counter[tuple[str, ...]] = Counter()
    for sentence in sentences:
        for word in sentence.lower().split():
            chars = [table[b] for b in word.encode("utf-8")]
            chars[-1] += END_OF_WORD
            words[tuple(chars)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # ties: alphabetical, deterministic
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def _image_processor(model: str) -> Any:
    """The PIL image processor class of ``model`` (``CLIP``, ``Blip``).

    Asking for the default class without torchvision installed works but warns.
    """
    import transformers

    return getattr(transformers, f"{model}ImageProcessorPil", None) or getattr(
        transformers, f"{model}ImageProcessor"
    )


def build_clip_tokenizer(sentences: Sequence[str] = SENTENCES, merges: int = 48) -> Any:
    """A ``CLIPTokenizer`` with a hand-written byte-level BPE vocabulary."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    learned = learn_merges(sentences, merges)
    vocab_list = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in learned]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    merge_pairs: Any = learned  # tuples: the annotation says strings, which fail here
    return CLIPTokenizer(vocab=vocab, merges=merge_pairs)


def build_tiny_clip(folder: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random-weight ``CLIPModel`` (hidden 32, 2 layers per tower) and its
    ``CLIPProcessor`` to ``folder``; returns the folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = build_clip_tokenizer()
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        },
        vision_config={
            **tower,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = _image_processor("CLIP")(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_blip_tokenizer(sentences: Sequence[str] = SENTENCES) -> Any:
    """A ``BertTokenizer`` with a word-piece vocabulary of the sentences' words and letters,
    and BLIP's ``[DEC]`` start-of-caption token."""
    from transformers import BertTokenizer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words = sorted({w for s in sentences for w in s.lower().split()})
    letters = sorted({c for w in words for c in w})
    pieces = [f"##{c}" for c in letters]
    tokens = list(dict.fromkeys(special + words + letters + pieces + [".", ","]))
    vocab = {token: i for i, token in enumerate(tokens)}
    return BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)


def build_tiny_blip(folder: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random-weight ``BlipForConditionalGeneration`` (hidden 32, 2 layers per tower)
    and its ``BlipProcessor`` to ``folder``; returns the folder."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    folder = Path(folder)
    tokenizer = build_blip_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": ids("[DEC]"),
            "eos_token_id": ids("[SEP]"),
            "sep_token_id": ids("[SEP]"),
            "pad_token_id": ids("[PAD]"),
            # Larger random weights than BLIP's default, so that captions vary by image.
            "initializer_range": 0.1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
            # BLIP's default (1e-10) makes every image embed alike.
            "initializer_range": 0.02,
        },
        projection_dim=16,
        image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    image_processor = _image_processor("Blip")(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


#: Colours :func:`write_sample_images` paints with.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}


def write_sample_images(
    folder: str | Path, count: int = 4, *, size: int = 48, seed: int = 0, ext: str = ".png"
) -> list[Path]:
    """Write ``count`` small images (a coloured shape on a background) named
    ``<shape>_<colour>_<n>.png``; returns their paths. Same seed, same bytes."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(PALETTE)
    paths = []
    for n in range(count):
        shape = ("square", "circle")[n % 2]
        colour, background = rng.sample(names, 2)
        image = Image.new("RGB", (size, size), PALETTE[background])
        draw = ImageDraw.Draw(image)
        box = (size // 5, size // 5, size - size // 5, size - size // 5)
        if shape == "square":
            draw.rectangle(box, fill=PALETTE[colour])
        else:
            draw.ellipse(box, fill=PALETTE[colour])
        path = folder / f"{shape}_{colour}_{n + 1:02d}{ext}"
        image.save(path)
        paths.append(path)
    return paths
