"""Tiny, offline test assets: a random-weight Llama with a freshly trained tokenizer.

Everything here is built in well under a second and needs no download, so tests, the demo
and other packages can exercise the real loading paths a user hits:

- :func:`build_tiny_llama` saves a 2-layer Llama (hidden 64) as a transformers folder, with a
  byte-level BPE tokenizer trained on the fly and a Jinja chat template;
- :func:`write_gguf` writes the same model as a GGUF file (F32 or F16), the way llama.cpp
  lays it out (tokenizer metadata, tensor names, q/k head permutation);
- :func:`write_ggml_stub` writes the first bytes of an old GGML (``ggjt``) file;
- :func:`qa_pairs` / :func:`write_qa_jsonl` make deterministic synthetic QA data;
- :func:`build_qwen_like_tokenizer` (EOS ``<|endoftext|>``, turns end with the special
  ``<|im_end|>``, no BOS: the shape of Qwen2.5's base tokenizer) and
  :func:`build_llama2_like_tokenizer` (SentencePiece-style, ``<s>`` added in front of every
  text, no chat template: the shape of Llama-2's base tokenizer);
- :func:`build_chain_llama` saves a Llama whose next token depends only on the current one
  along a chosen chain, so a test knows exactly what greedy generation will produce.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

#: The tiny model's chat template (Zephyr-like): every turn ends with the eos token.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: Special tokens of the tiny tokenizer, in id order (ids 0..5).
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")

CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Canada", "Ottawa"),
    ("Cuba", "Havana"),
    ("Russia", "Moscow"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Mexico", "Mexico City"),
)


def qa_pairs(n: int = 150, seed: int = 0) -> list[dict[str, str]]:
    """``n`` deterministic question/answer pairs: capital cities, then small sums."""
    import random

    rng = random.Random(seed)
    pairs: list[dict[str, str]] = []
    for country, city in CAPITALS[: min(n, len(CAPITALS))]:
        pairs.append({"question": f"What is the capital of {country}?", "answer": f"{city}."})
    while len(pairs) < n:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        op = rng.choice(("plus", "minus", "times"))
        value = a + b if op == "plus" else a - b if op == "minus" else a * b
        pairs.append({"question": f"What is {a} {op} {b}?", "answer": f"{a} {op} {b} is {value}."})
    return pairs


def write_qa_jsonl(path: str | Path, n: int = 150, *, seed: int = 0, fmt: str = "qa") -> Path:
    """Write :func:`qa_pairs` as JSONL in one of the formats the readers understand.

    ``fmt``: ``qa`` (question/answer), ``prompt_completion``, ``alpaca`` or ``chat``.
    """
    rows: list[dict[str, Any]] = []
    for pair in qa_pairs(n, seed):
        q, a = pair["question"], pair["answer"]
        if fmt == "qa":
            rows.append({"question": q, "answer": a})
        elif fmt == "prompt_completion":
            rows.append({"prompt": f"Q: {q}\nA:", "completion": f" {a}"})
        elif fmt == "alpaca":
            rows.append({"instruction": "Answer the question.", "input": q, "output": a})
        elif fmt == "chat":
            rows.append(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            )
        else:
            raise ValueError(f"unknown format {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def default_corpus() -> list[str]:
    """Text the tiny tokenizer learns its merges from: the QA data and a few sentences."""
    lines = [f"{p['question']} {p['answer']}" for p in qa_pairs(150)]
    lines += [
        "Answer the question. The answer is short and exact.",
        "Instruction: Input: Response: Q: A: user assistant system",
        "The quick brown fox jumps over the lazy dog.",
    ]
    return lines


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 384) -> Any:
    """A byte-level BPE (GPT-2 style) trained on ``corpus``, with special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus or default_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.model_max_length = 512
    return tokenizer


def build_tiny_llama(
    directory: str | Path,
    *,
    seed: int = 0,
    corpus: list[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int | None = None,
) -> Path:
    """Save a random-weight Llama (default: hidden 64, 2 layers) and its tokenizer.

    ``num_heads`` (default hidden / 16, with half as many key/value heads) gives a model
    with that many attention heads and as many key/value heads (Llama-2-7B's layout).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads or max(hidden_size // 16, 2),
        num_key_value_heads=num_heads or max(hidden_size // 32, 1),
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _permute_heads(weight: Any, n_head: int) -> Any:
    """llama.cpp's row order for q/k: rotary halves interleaved within each head."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _add_tokenizer(writer: Any, tokenizer: Any) -> None:
    """A byte-level tokenizer's GGUF fields: the "gpt2" (BPE) vocabulary in id order, its
    merges, the special ids and the chat template."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = backend["model"]["vocab"]
    tokens = [""] * len(tokenizer)
    for token, index in vocab.items():
        tokens[index] = token
    special = {t["id"]: t["content"] for t in backend["added_tokens"]}
    for index, token in special.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    token_types = [
        gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
        for i in range(len(tokens))
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(
    model_dir: str | Path, path: str | Path, *, dtype: str = "f32", drop: tuple[str, ...] = ()
) -> Path:
    """Write the Llama in ``model_dir`` (and its byte-level tokenizer) as a GGUF file.

    ``dtype``: ``f32`` (loads back exactly), ``f16``, or ``q8_0`` (quantized by the ``gguf``
    package's own quantizer, as llama.cpp's ``llama-quantize`` lays it out). 1-D tensors
    (norms) stay F32. Tensors whose (transformers) name starts with one of ``drop`` are left
    out: a damaged file, for tests.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tensors = load_file(str(model_dir / "model.safetensors"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(path), arch="llama")
    head_dim = config.hidden_size // config.num_attention_heads
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[dtype])

    _add_tokenizer(writer, tokenizer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, array in tensors.items():
        if name.startswith(drop) and drop:
            continue
        stem, _, suffix = name.rpartition(".")
        target = names.get_name(stem)
        if target is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        data = array.astype(np.float32)
        if stem.endswith("q_proj"):
            data = _permute_heads(data, config.num_attention_heads)
        elif stem.endswith("k_proj"):
            data = _permute_heads(data, config.num_key_value_heads)
        if dtype == "f16" and data.ndim > 1:
            data = data.astype(np.float16)
        if dtype == "q8_0" and data.ndim > 1:
            kind = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(data, kind)
            writer.add_tensor(f"{target}.{suffix}", packed, raw_dtype=kind)
            continue
        writer.add_tensor(f"{target}.{suffix}", data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_ggml_stub(path: str | Path, magic: str = "ggjt") -> Path:
    """The first bytes of an old GGML model file (llama.cpp before August 2023).

    The magic is a little-endian uint32, so ``ggjt`` is stored as the bytes ``tjgg``,
    followed by the format version and a few hyperparameters.
    """
    value = int.from_bytes(magic.encode("ascii"), "big")
    header = struct.pack("<II", value, 3) + struct.pack("<7i", 32000, 4096, 256, 32, 32, 128, 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + bytes(64))
    return path


#: Qwen2.5's chat template, shortened: chatml with a default system message.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_like_tokenizer(corpus: list[str] | None = None, vocab_size: int = 384) -> Any:
    """A byte-level BPE shaped like Qwen2.5's base tokenizer.

    Special tokens ``<|endoftext|>`` (the EOS and pad), ``<|im_start|>``, ``<|im_end|>``; no
    BOS; a chatml chat template, so an assistant turn ends with ``<|im_end|>``, not the EOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([*(corpus or default_corpus()), "system user assistant"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.model_max_length = 512
    return tokenizer


def build_llama2_like_tokenizer(corpus: list[str] | None = None, vocab_size: int = 384) -> Any:
    """A SentencePiece-style BPE shaped like Llama-2's base tokenizer.

    ``<unk>``, ``<s>``, ``</s>`` as ids 0-2, ``▁`` word boundaries, byte fallback; the
    tokenizer puts ``<s>`` in front of every text it encodes (``add_bos_token``), adds no
    EOS, and has no chat template (a base model).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    import string

    text = "".join(corpus or default_corpus()) + string.printable
    alphabet = sorted({c for c in text.replace(" ", "▁") if c not in "\r\x0b\x0c"})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[*alphabet, "▁"],
        show_progress=False,
    )
    backend.train_from_iterator(corpus or default_corpus(), trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.model_max_length = 512
    return tokenizer


def build_chain_llama(
    directory: str | Path, tokenizer: Any, chain: list[int], *, eos_token_id: Any = None
) -> Path:
    """A 2-layer Llama that, after token ``chain[i]``, predicts ``chain[i + 1]``.

    Attention and MLP outputs are zero, so the logits depend on the current token only; the
    head scores ``chain[i + 1]`` highest after ``chain[i]`` (every other token predicts
    ``chain[0]``). ``eos_token_id`` goes into the generation config (an int or a list, as
    real checkpoints ship it; default the tokenizer's EOS).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if len(set(chain[:-1])) != len(chain) - 1:
        raise ValueError("a chain token may appear only once (except as the last)")
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        unit = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        head = torch.zeros_like(emb)
        head[chain[0]] = unit.sum(0) * 0.5  # a weak default: back to the start
        for a, b in zip(chain, chain[1:], strict=False):
            head[b] += unit[a] * 40.0
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(head / (emb.norm(dim=-1, keepdim=True).mean()))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
