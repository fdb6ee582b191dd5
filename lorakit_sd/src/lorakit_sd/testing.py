"""Tiny, offline test assets shared by every family's stand-in: a caption corpus, a CLIP
tokenizer with a hand-made byte-level BPE vocabulary, small text encoders, image folders with
captions (``metadata.csv``, ``metadata.jsonl`` or ``.txt`` sidecars) and configs.

The stand-in models themselves belong to their families (``ModelFamily.standin``): the UNet
families' in :mod:`lorakit_sd.families.unet_standin`, the transformer families' in
:mod:`lorakit_sd.families.transformer_standin`.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

#: Sentences the tiny tokenizer's merges are learned from (and handy captions).
CORPUS = (
    "a photo of a red cat sitting on a blue chair",
    "a painting of a green dog in the park, sunny day",
    "a drawing of a yellow bird on a tree branch",
    "a mascot character with a big smile, white background",
    "a photo of a small house near the river at night",
    "a red circle and a blue square on a white background",
)
#: Pixels per latent pixel of the tiny VAE (two blocks: one downsampling).
TINY_VAE_FACTOR = 2
#: Image side that divides evenly through the tiny VAE and UNet.
TINY_RESOLUTION = 32


def bytes_to_unicode() -> dict[int, str]:
    """The byte → printable character table of byte-level BPE (as GPT-2 and CLIP use)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_bpe_vocab(
    corpus: tuple[str, ...] = CORPUS, num_merges: int = 48
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary: bytes, bytes + ``</w>``, learned merges, specials."""
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    words: Counter[tuple[str, ...]] = Counter()
    table = bytes_to_unicode()
    for line in corpus:
        for word in line.lower().replace(",", " ,").split():
            symbols = [table[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols_, count in words.items():
            for pair in zip(symbols_, symbols_[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        vocab_list.append(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols_, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols_):
                if i + 1 < len(symbols_) and (symbols_[i], symbols_[i + 1]) == best:
                    out.append(symbols_[i] + symbols_[i + 1])
                    i += 2
                else:
                    out.append(symbols_[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in vocab_list:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def tiny_tokenizer() -> Any:
    """A ``CLIPTokenizer`` over :func:`clip_bpe_vocab` (77 tokens, as SD uses)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab()
    # merges as (a, b) tuples: transformers 5 rejects "a b" strings here
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


def _text_encoder(cls: Any, vocab_size: int, hidden: int, seed: int) -> Any:
    import torch
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    return cls(config).eval()


_COLORS = ((220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200))


def tiny_image(index: int, size: tuple[int, int] = (TINY_RESOLUTION, TINY_RESOLUTION)) -> Any:
    """A deterministic picture: a colored disc and bar on a shaded background."""
    from PIL import Image, ImageDraw

    w, h = size
    color = _COLORS[index % len(_COLORS)]
    image = Image.new("RGB", size, (255 - 30 * (index % 4), 250, 240))
    draw = ImageDraw.Draw(image)
    r = min(w, h) // 3
    cx, cy = w // 2 + (index % 3 - 1) * w // 6, h // 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    draw.rectangle((0, h - h // 6, w * (index % 5 + 1) // 5, h), fill=color[::-1])
    return image


def write_tiny_images(
    directory: str | Path,
    n: int = 4,
    *,
    layout: str = "csv",
    sizes: list[tuple[int, int]] | None = None,
    captions: list[str] | None = None,
    image_format: str = "png",
) -> Path:
    """Write ``n`` small images and their captions; return the folder.

    ``layout``: ``csv`` (``metadata.csv`` with ``file_name,text``, as the auto-labeler and
    ``datasets``' imagefolder use), ``jsonl`` (``metadata.jsonl``) or ``txt`` (a ``.txt``
    caption beside each image). ``sizes`` gives each image's (width, height).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        size = sizes[i % len(sizes)] if sizes else (TINY_RESOLUTION, TINY_RESOLUTION)
        name = f"img_{i:03d}.{image_format}"
        tiny_image(i, size).save(directory / name)
        caption = captions[i % len(captions)] if captions else CORPUS[i % len(CORPUS)]
        rows.append((name, caption))
    if layout == "csv":
        with open(directory / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "text"])
            writer.writerows(rows)
    elif layout == "jsonl":
        lines = [json.dumps({"file_name": name, "text": text}) for name, text in rows]
        (directory / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif layout == "txt":
        for name, text in rows:
            (directory / name).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    else:
        raise ValueError(f"layout must be csv, jsonl or txt, not {layout!r}")
    return directory


def write_tiny_pairs(directory: str | Path, n: int = 4, *, layout: str = "column") -> Path:
    """Write an edit dataset of ``n`` pairs: each target image is its control image turned
    upside down, captioned with one instruction; return the folder.

    ``layout``: ``column`` (``metadata.csv`` with a ``control`` column naming
    ``control_NNN.png`` beside the targets) or ``folder`` (``control/img_NNN.png`` with the
    target's name, ``metadata.csv`` with ``file_name,text``).
    """
    from PIL import ImageOps

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "folder":
        (directory / "control").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        name = f"img_{i:03d}.png"
        before = tiny_image(i)
        ImageOps.flip(before).save(directory / name)
        control = f"control_{i:03d}.png" if layout == "column" else f"control/{name}"
        before.save(directory / control)
        rows.append({"file_name": name, "control": control, "text": "a photo of a red cat"})
    columns = ["file_name", "control", "text"] if layout == "column" else ["file_name", "text"]
    with open(directory / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return directory


def tiny_config(
    model: Any,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    single_file: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """A lorakit config (as a dict) that trains ``model`` on ``data_dir`` in a few seconds."""
    sd: dict[str, Any] = {
        "resolution": model.resolution,
        "bucket_step": 8,
        "sample_steps": 2,
    }
    if single_file:
        sd["base_config"] = str(model.config_dir)
    sd.update(overrides.pop("sd", {}))
    data: dict[str, Any] = {
        "task_type": "image-generation",
        "base_model": str(model.single_file if single_file else model.diffusers_dir),
        "train_data_dir": str(data_dir),
        "output_dir": str(output_dir),
        "lora_rank": 4,
        "batch_size": 2,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "mixed_precision": "no",
        "seed": 0,
        "trackers": ["jsonl"],
        "sd": sd,
    }
    data.update(overrides)
    return data
