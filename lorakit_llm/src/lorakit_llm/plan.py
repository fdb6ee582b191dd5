"""What ``lorakit plan`` needs from the llm backend: the model on the meta device and a
fake batch, from the model's config alone.

The base's config is read from a folder (``config.json``, weights or not), a ``config.json``
file, a hub id (the local cache under ``HF_HUB_OFFLINE``), or a ``.gguf`` file's metadata;
no weight is read. The model is built with transformers on the meta device, LoRA injected
with the backend's own ``LoraConfig``; the batch is ``batch_size`` rows as long as the
longest training example (tokenized as the backend does, when the tokenizer and data are
on disk; else ``max_seq_len``), every token a target (the worst case of answer-only loss);
the loss traces what :func:`lorakit_llm.loss.causal_lm_loss` does for such a batch.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from lorakit.api import Config, PlanModel, UsageError
from lorakit_llm.loading import BaseSource, _load_error, file_magic, resolve_base
from lorakit_llm.section import LLMSection

DTYPE_NAMES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16", "auto": "bfloat16"}
#: Files a transformers tokenizer is read from (one is enough).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
#: The smallest max_seq_len the ladder proposes.
MIN_SEQ_LEN = 256


def read_model_config(base: str) -> Any:
    """The transformers config of ``base`` without its weights."""
    from transformers import AutoConfig

    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a model config ({exc})") from None
        if "model_type" not in data:
            raise UsageError(f"{path}: no model_type (not a transformers config.json)")
        data = dict(data)
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if path.is_file() and file_magic(path) == "gguf":
        return gguf_config(path)
    source: BaseSource = resolve_base(base)
    if source.gguf_file:
        return gguf_config(Path(source.location) / source.gguf_file)
    try:
        return AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(source, "the config", exc) from None


def gguf_config(path: Path) -> Any:
    """The transformers config a GGUF file's metadata describes (no tensor is read)."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        data = dict(load_gguf_checkpoint(str(path), return_tensors=False)["config"])
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: cannot read the GGUF metadata ({exc})") from None
    return AutoConfig.for_model(data.pop("model_type"), **data)


def count_rows(path: str) -> int | None:
    """Rows of a JSONL file or folder of JSONL files (None for other layouts)."""
    root = Path(path).expanduser()
    files = [root] if root.is_file() else sorted(root.glob("*.jsonl")) if root.is_dir() else []
    if not files or any(f.suffix != ".jsonl" for f in files):
        return None
    rows = 0
    for file in files:
        with open(file, encoding="utf-8") as handle:
            rows += sum(1 for line in handle if line.strip())
    return rows


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def plan_tokenizer(base: str) -> Any:
    """The base's tokenizer without its weights: a folder's or the local hub cache's tokenizer
    files, or a ``.gguf`` file's tokenizer fields (transformers reads the metadata only)."""
    from transformers import AutoTokenizer

    source = resolve_base(base)
    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    return AutoTokenizer.from_pretrained(source.location, local_files_only=True, **kwargs)


def longest_example(config: Config, section: LLMSection) -> tuple[int | None, str]:
    """Tokens of the longest training example, as the backend tokenizes it (template, BOS,
    stop token, ``max_seq_len`` cut) and "", or None and why the lengths cannot be read
    (no tokenizer on disk, unreadable data). Batches are grouped by length and
    ``batch_size`` counts examples, so the peak micro-batch is ``batch_size`` examples of
    about this length, not ``max_seq_len`` tokens each."""
    from lorakit.api import get_registries
    from lorakit_llm.chat_templates import resolve_template
    from lorakit_llm.formats import choose_reader
    from lorakit_llm.tokenize import tokenize_records

    base = Path(config.train.base_model).expanduser()
    folder = base.parent if base.is_file() and base.suffix == ".json" else base
    config_only = folder.is_dir() and (folder / "config.json").is_file()
    if config_only and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None, "no tokenizer files beside config.json"
    try:
        tokenizer = plan_tokenizer(config.train.base_model)
    except Exception as exc:  # a hub id not cached, a broken tokenizer: plan the worst case
        return None, f"the tokenizer could not be read ({_short(exc)})"
    try:
        readers = get_registries().dataset_readers
        _, reader = choose_reader(config.train.train_data_dir, readers, section.dataset_format)
        records = reader.factory(config.train.train_data_dir, system_prompt=section.system_prompt)
        template, _ = resolve_template(section.chat_template, tokenizer)
        if section.method == "grpo":
            from lorakit_llm.grpo.generation import prompt_text

            texts = [prompt_text(tokenizer, r["prompt"], template) for r in records]
            encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            lengths = [
                min(len(ids), section.max_seq_len) + section.max_completion_length
                for ids in encoded
            ]
        elif section.method != "sft":
            from lorakit_llm.preference.data import tokenize_pairs

            pairs = tokenize_pairs(records, tokenizer, template, max_seq_len=section.max_seq_len)
            lengths = [*pairs.chosen.lengths(), *pairs.rejected.lengths()]
        else:
            lengths = list(
                tokenize_records(
                    records,
                    tokenizer,
                    template,
                    max_seq_len=section.max_seq_len,
                    train_on_inputs=section.train_on_inputs,
                ).lengths()
            )
    except Exception as exc:  # noqa: BLE001 - a plan is advice: the data's errors come at train
        return None, f"the data could not be tokenized ({_short(exc)})"
    longest = max(lengths, default=0)
    return (longest, "") if longest else (None, "no tokenized rows")


def planner(config: Config) -> PlanModel:
    """The :class:`PlanModel` of an llm config (registered as the backend's planner)."""
    import torch

    section = config.section if isinstance(config.section, LLMSection) else LLMSection()
    train = config.train
    model_config = read_model_config(train.base_model)
    model_config.use_cache = False
    half = train.mixed_precision != "no"
    compute = getattr(torch, DTYPE_NAMES[train.mixed_precision])
    if section.torch_dtype != "auto":
        weights = getattr(torch, section.torch_dtype)
    elif section.load_in_4bit:
        weights = compute if half else torch.bfloat16
    else:
        weights = compute
    longest, why = longest_example(config, section)
    batch, seq = train.batch_size, longest or section.max_seq_len
    caveat = f"worst case: every row {seq:,} tokens (llm.max_seq_len); {why}" if why else ""
    grpo = section.method == "grpo"
    pairs = section.method not in ("sft", "grpo")
    reference = (section.method == "dpo" and not section.precompute_ref_logps) or (
        grpo and section.preference_beta() != 0
    )
    if pairs:  # chosen and rejected of each pair in one forward
        batch *= 2
    if grpo:  # every completion of the micro-batch's prompts in one forward
        batch *= section.num_generations
        if why:
            seq = section.max_seq_len + section.max_completion_length
    quantized = 0

    def build(checkpointing: bool) -> Any:
        nonlocal quantized
        peft_model, quantized = meta_model(config, section, model_config, weights, checkpointing)
        return peft_model

    def fake_batch() -> dict[str, Any]:
        ids = torch.randint(0, int(model_config.vocab_size), (batch, seq))
        out: dict[str, Any] = {"input_ids": ids, "labels": ids}
        if section.packing:
            out["position_ids"] = torch.arange(seq).expand(batch, seq)
        else:
            out["attention_mask"] = torch.ones(batch, seq, dtype=torch.long)
        return out

    caches = (
        {"generation KV cache": kv_cache_bytes(model_config, batch, seq, compute)} if grpo else {}
    )
    name = type(model_config).__name__.removesuffix("Config")
    size = _params(model_config)
    model = PlanModel(
        build=build,
        batch=fake_batch,
        loss=partial(plan_loss, reference=reference),
        description=f"{name} ({size}), {'4-bit NF4' if section.load_in_4bit else str(weights).removeprefix('torch.')} weights",
        per_step=f"{batch * seq:,} tokens ({batch} × {seq})"
        + (f", {batch // 2} pairs{' + a reference pass' if reference else ''}" if pairs else "")
        + (
            f", {train.batch_size} prompts × {section.num_generations} completions"
            f"{' + a reference pass' if reference else ''}"
            if grpo
            else ""
        ),
        autocast_dtype=compute if half else None,
        items=count_rows(train.train_data_dir),
        resolution_key="llm.max_seq_len",
        resolution=seq,
        resolution_steps=tuple(s for s in (seq // 2, seq // 4) if s >= MIN_SEQ_LEN),
        qlora_key="llm.load_in_4bit",
        qlora=section.load_in_4bit,
        caveat=caveat,
        caches=caches,
    )

    if section.load_in_4bit:  # the count of 4-bit weights is known once the model is built
        build(False)
        model.quantized_params = quantized
    return model


def kv_cache_bytes(model_config: Any, rows: int, seq: int, dtype: Any) -> int:
    """Bytes of the keys and values ``generate`` keeps for ``rows`` sequences of ``seq``
    tokens (GRPO's sampling; counted on top of the step, an upper bound: it is freed before
    the training forward)."""
    import torch

    heads = int(getattr(model_config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    layers = int(model_config.num_hidden_layers)
    size = torch.empty((), dtype=dtype).element_size() if dtype is not None else 4
    return 2 * layers * kv_heads * int(head_dim) * rows * seq * size


def _params(model_config: Any) -> str:
    hidden = getattr(model_config, "hidden_size", None)
    layers = getattr(model_config, "num_hidden_layers", None)
    if hidden is None or layers is None:
        return "?"
    return f"{layers} layers × {hidden}"


def meta_model(
    config: Config, section: LLMSection, model_config: Any, weights: Any, checkpointing: bool
) -> tuple[Any, int]:
    """The PEFT model training builds, on the meta device, and its count of 4-bit weights."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from lorakit_llm.backend import lora_config

    quantized = 0
    kwargs: dict[str, Any] = {"dtype": weights}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, **kwargs)
    if section.load_in_4bit:
        # bitsandbytes quantizes the Linear layers (not the head); peft's
        # prepare_model_for_kbit_training then casts every other weight to float32.
        head = model.get_output_embeddings()
        linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
        quantized = sum(m.weight.numel() for m in linear)
        kept = {id(m.weight) for m in linear}
        for param in model.parameters():
            if id(param) not in kept:
                param.data = param.data.float()
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with torch.device("meta"):
        peft_model = get_peft_model(model, lora_config(config, section))
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return peft_model, quantized


def plan_loss(module: Any, batch: dict[str, Any], *, reference: bool) -> Any:
    """:func:`~lorakit_llm.loss.causal_lm_loss` with every token a target, without its
    data-dependent indexing (which fake tensors cannot trace): the same logits and fp32
    chunks; with ``reference``, DPO's reference pass too."""
    import torch

    from lorakit_llm.loss import chunked_cross_entropy

    kwargs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"][:, 1:]
    keep = torch.arange(labels.shape[1])
    logits = module(**kwargs, use_cache=False, logits_to_keep=keep).logits
    loss = chunked_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    if reference:
        # DPO's reference pass runs after the policy's, whose activations it sees. Under
        # no_grad its layers free their activations one by one, so what it adds at the peak
        # is its logits and their fp32 chunk (torch's tracker cannot follow a module
        # called twice in a step, so the logits are allocated rather than traced).
        with torch.no_grad():
            ref = torch.empty_like(logits)
            ref_loss = chunked_cross_entropy(ref.reshape(-1, ref.shape[-1]), labels.reshape(-1))
        loss = loss + ref_loss
    return loss
