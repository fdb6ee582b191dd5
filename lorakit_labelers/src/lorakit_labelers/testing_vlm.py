"""Tiny random-weight Florence-2 and Qwen-VL models, built offline, for tests and demos.

Each is saved the way the hub keeps the real one (weights, config, tokenizer, image
processor, and for Qwen-VL a chat template in ``chat_template.jinja``), so
``--option model=FOLDER`` runs the ``florence2`` and ``qwen-vl`` labelers end to end through
the same ``from_pretrained`` calls. Their captions are meaningless but deterministic.

The tokenizers are byte-level BPEs learned from a handful of sentences without the full
byte alphabet, so that whatever the random weights generate decodes to readable words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit_labelers.testing import SENTENCES, _image_processor

#: Architectures :func:`build_tiny_qwen_vl` builds.
QWEN_VL_ARCHITECTURES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

#: Qwen-VL's chat template, cut down to text and images.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
FLORENCE2_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<image>")
#: Florence-2's task prompts, learned by its tokenizer.
FLORENCE2_PROMPTS = (
    "What does the image describe?",
    "Describe in detail what is shown in the image.",
    "Describe with a paragraph what is shown in the image.",
    "What is the text in the image?",
)


def build_bpe_tokenizer(
    specials: Sequence[str], extra: Sequence[str] = (), vocab_size: int = 320, **tokens: Any
) -> Any:
    """A ``PreTrainedTokenizerFast`` (byte-level BPE) learned from :data:`SENTENCES` and
    ``extra``; ``specials`` are its first ids, ``tokens`` name them (``eos_token=...``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), show_progress=False
    )
    backend.train_from_iterator([*SENTENCES, *extra], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=4096, **tokens)


def build_tiny_florence2(folder: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random-weight ``Florence2ForConditionalGeneration`` (a one-stage DaViT, a
    one-layer BART of width 16) and its ``Florence2Processor`` to ``folder``."""
    import torch
    from transformers import (
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    folder = Path(folder)
    tokenizer = build_bpe_tokenizer(
        FLORENCE2_SPECIAL_TOKENS,
        FLORENCE2_PROMPTS,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    ids = tokenizer.convert_tokens_to_ids
    stride = 8
    # Large random weights, so that captions differ from image to image.
    init = 0.3
    config = Florence2Config(
        text_config={
            "model_type": "bart",
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 128,
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "init_std": init,
            "bos_token_id": ids("<s>"),
            "eos_token_id": ids("</s>"),
            "pad_token_id": ids("<pad>"),
            "decoder_start_token_id": ids("</s>"),
            "forced_eos_token_id": ids("</s>"),
        },
        vision_config={
            "depths": [1],
            "patch_size": [7],
            "patch_stride": [stride],
            "patch_padding": [3],
            "patch_prenorm": [False],
            "embed_dim": [16],
            "num_heads": [1],
            "num_groups": [1],
            "window_size": 4,
            "projection_dim": 16,
            "drop_path_rate": 0.0,
            "initializer_range": init,
        },
        image_token_id=ids("<image>"),
    )
    # Read by transformers' generic weight initialisation, which Florence-2 uses.
    config.initializer_range = init
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    # One image token per patch of the last stage, and one for the whole image.
    image_processor = _image_processor("CLIP")(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        image_seq_length=(image_size // stride) ** 2 + 1,
    )
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _qwen_vl_config(arch: str, tokenizer: Any, patch: int) -> Any:
    """The config of a tiny ``arch`` model: hidden 32, two layers per tower."""
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    config_class: Any
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": None,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "initializer_range": 0.1,
        # The head (8 wide) split between time, height and width.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    vision: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "patch_size": patch,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": 0.1,
    }
    if arch == "qwen2_vl":
        text["rope_parameters"]["mrope_section"] = [1, 1, 2]
        vision |= {"embed_dim": 32}
        config_class = transformers.Qwen2VLConfig
    elif arch == "qwen2_5_vl":
        text["rope_parameters"]["mrope_section"] = [1, 1, 2]
        vision |= {
            "intermediate_size": 64,
            "out_hidden_size": 32,
            "window_size": 2 * patch * 2,
            "fullatt_block_indexes": [1],
        }
        config_class = transformers.Qwen2_5_VLConfig
    elif arch == "qwen3_vl":
        text |= {"head_dim": 8}
        text["rope_parameters"] |= {"mrope_section": [2, 1, 1], "mrope_interleaved": True}
        vision |= {
            "intermediate_size": 64,
            "out_hidden_size": 32,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        }
        config_class = transformers.Qwen3VLConfig
    else:
        raise ValueError(f"unknown architecture {arch!r} (one of {QWEN_VL_ARCHITECTURES})")
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build_tiny_qwen_vl(
    folder: str | Path, arch: str = "qwen2_vl", *, seed: int = 0, max_pixels: int = 64 * 64
) -> Path:
    """Save a random-weight Qwen-VL chat model of architecture ``arch`` (one of
    :data:`QWEN_VL_ARCHITECTURES`), its tokenizer, image processor (patches of 4 pixels,
    merged 2×2, images scaled to at most ``max_pixels``) and chat template to ``folder``.

    The files are those of a hub repository; the processor itself is not built here, as
    its video part needs torchvision.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    folder = Path(folder)
    tokenizer = build_bpe_tokenizer(
        QWEN_VL_SPECIAL_TOKENS,
        ["system user assistant You are a helpful assistant.", "Describe this image."],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_VL_SPECIAL_TOKENS[1:]),
    )
    patch = 4
    config = _qwen_vl_config(arch, tokenizer, patch)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    # Chat models ship sampling settings; a labeler must stay greedy all the same.
    model.generation_config.update(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05
    )
    image_processor = _image_processor("Qwen2VL")(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": (patch * 2) ** 2, "longest_edge": max_pixels},
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_VL_CHAT_TEMPLATE, encoding="utf-8")
    return folder
