"""Tiny, offline Stable Diffusion test assets: random-weight SD1- and SDXL-shaped models.

Everything here builds in about a second and downloads nothing, so tests, the demo and other
packages can exercise the loading paths a user hits:

- :func:`build_tiny_sd` makes an SD1-shaped (``family="sd1"``) or SDXL-shaped
  (``family="sdxl"``) pipeline with random weights (a two-block UNet, a two-block VAE, one or
  two small CLIP text encoders with a hand-made byte-level BPE vocabulary, a DDPM scheduler)
  and saves it three ways: a diffusers folder, a single-file ``.safetensors`` checkpoint in
  the original SD/SGM key layout (the way users keep ``v1-5-pruned.safetensors``), and a
  config-only diffusers folder (configs, tokenizers, scheduler; no weights) that tells
  ``from_single_file`` the shapes offline (``sd.base_config`` in a lorakit config).
- :func:`write_tiny_images` writes a small image folder with captions as ``metadata.csv``
  (``file_name,text``), ``metadata.jsonl`` or ``.txt`` sidecars.

The SDXL-shaped model keeps SDXL's structure: two text encoders of different widths (the
second with a projection), ``text_time`` added conditioning, linear ``proj_in``, a
cross-attention up block with an upsampler, and two transformer layers in its inner block.
Both tiny UNets have attention at full latent resolution (as SD1 does; SDXL's outer block has
none), so a LoRA on the attention can overfit a few images in a few steps.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from dataclasses import dataclass
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
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=32, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return cls(config).eval()


def build_tiny_pipeline(family: str = "sd1", seed: int = 0) -> Any:
    """An SD1- or SDXL-shaped diffusers pipeline with random weights (in memory)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in ("sd1", "sdxl"):
        raise ValueError(f"family must be 'sd1' or 'sdxl', not {family!r}")
    tokenizer = tiny_tokenizer()
    vocab_size = len(tokenizer)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
        prediction_type="epsilon",
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=TINY_RESOLUTION,
        scaling_factor=0.18215 if family == "sd1" else 0.13025,
    )  # fmt: skip
    torch.manual_seed(seed + 2)
    if family == "sd1":
        text_encoder = _text_encoder(CLIPTextModel, vocab_size, 32, seed + 3)
        unet = UNet2DConditionModel(
            sample_size=TINY_RESOLUTION // TINY_VAE_FACTOR, in_channels=4, out_channels=4,
            block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=32,
        )  # fmt: skip
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
    text_encoder = _text_encoder(CLIPTextModel, vocab_size, 32, seed + 3)
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, vocab_size, 64, seed + 4)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // TINY_VAE_FACTOR, in_channels=4, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=32 + 64,
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=False,
    )  # fmt: skip


@dataclass
class TinyModel:
    """Where :func:`build_tiny_sd` saved one tiny model, three ways."""

    family: str
    diffusers_dir: Path
    single_file: Path
    config_dir: Path
    resolution: int = TINY_RESOLUTION

    def load(self) -> Any:
        """The pipeline, from the diffusers folder (float32, CPU)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline
        return cls.from_pretrained(self.diffusers_dir)


def build_tiny_sd(directory: str | Path, family: str = "sd1", seed: int = 0) -> TinyModel:
    """Build a tiny model and save it under ``directory``.

    ``directory/diffusers/`` is a diffusers folder, ``directory/<family>-tiny.safetensors``
    a single-file checkpoint in the original layout, and ``directory/config/`` the same
    folder without weights (what ``from_single_file(..., config=...)`` reads offline).
    """
    from lorakit.api import save_safetensors
    from lorakit_sd.families.ldm import pipeline_to_ldm

    directory = Path(directory)
    pipe = build_tiny_pipeline(family, seed)
    diffusers_dir = directory / "diffusers"
    pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    config_dir = directory / "config"
    if config_dir.exists():
        shutil.rmtree(config_dir)
    shutil.copytree(
        diffusers_dir, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
    )
    single = directory / f"{family}-tiny.safetensors"
    tensors = {k: v.detach().contiguous() for k, v in pipeline_to_ldm(pipe).items()}
    save_safetensors(tensors, single, metadata={"format": "pt"})
    return TinyModel(family, diffusers_dir, single, config_dir)


# -- data -------------------------------------------------------------------------------------

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


def tiny_config(
    model: TinyModel,
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
