"""Text generation and adapter handling shared by sampling, ``lorakit sample`` and ``chat``.

One base model carries several named PEFT adapters: each is loaded once and scaled by its
weight; :func:`use_adapter` switches between them, :func:`combine_adapters` adds a weighted
combination (peft ``add_weighted_adapter``, ``cat``: the exact sum of the weighted updates,
whatever the ranks). Generation is greedy, so the same prompt gives the same answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.api import UsageError, write_text
from lorakit_llm.chat_templates import end_markers
from lorakit_llm.tokenize import end_of_turn_ids, render, with_bos

COMBINED = "combined"


@dataclass
class AdapterRef:
    """An adapter the user named: ``[NAME=]PATH[:WEIGHT]``."""

    name: str
    path: Path
    weight: float = 1.0


#: The largest adapter_config.json read (a few kB in practice).
MAX_ADAPTER_CONFIG = 1024 * 1024


def adapter_dir(path: str | Path) -> Path:
    """The folder holding ``adapter_config.json``: ``path`` itself or ``path/adapter``.

    Its weights must be ``adapter_model.safetensors``: a pickled ``adapter_model.bin`` is
    refused, never loaded (loading a pickle runs the code inside it).
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        raise UsageError(
            f"{path}: a pickled adapter can run code when loaded; lorakit reads "
            "PEFT adapters saved as adapter_model.safetensors only"
        )
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            weights = candidate / "adapter_model.safetensors"
            if not weights.is_file() and (candidate / "adapter_model.bin").is_file():
                raise UsageError(
                    f"{candidate}: its weights are adapter_model.bin, a pickle that can run "
                    "code when loaded; lorakit reads adapter_model.safetensors only (save the "
                    "adapter with safe_serialization=True)"
                )
            return candidate
    if not path.exists():
        raise UsageError(f"adapter not found: {path}")
    raise UsageError(f"{path} is not a PEFT adapter (no adapter_config.json in it or in adapter/)")


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """``folder/adapter_config.json`` as a dict; one line naming the file if it is not one."""
    path = folder / "adapter_config.json"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_ADAPTER_CONFIG + 1)
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}", where=path) from None
    if len(raw) > MAX_ADAPTER_CONFIG:
        raise UsageError("larger than 1 MB: not a PEFT adapter config", where=path)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"not valid JSON ({str(exc)[:120]})", where=path) from None
    if not isinstance(data, dict):
        raise UsageError("not a JSON object", where=path)
    return data


def parse_adapters(items: list[tuple[str, float]]) -> list[AdapterRef]:
    """``(text, weight)`` pairs (the core's ``path[:weight]`` parse) → named adapters."""
    refs: list[AdapterRef] = []
    for text, weight in items:
        name, sep, rest = text.partition("=")
        if sep and name and "/" not in name:
            path = adapter_dir(rest)
        else:
            path = adapter_dir(text)
            name = path.parent.name if path.name == "adapter" else path.name
        name = re.sub(r"[^\w.-]", "_", name) or "adapter"
        base, k = name, 2
        while name in {r.name for r in refs} or name == COMBINED:
            name, k = f"{base}-{k}", k + 1
        refs.append(AdapterRef(name, path, weight))
    return refs


def set_weight(model: Any, name: str, weight: float) -> None:
    """Scale adapter ``name`` by ``weight`` (its update becomes weight × alpha/r × BA)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(name, weight)


def mismatch_summary(exc: Exception) -> str:
    """The first line of a load error, or the modules whose shapes do not fit."""
    import re

    text = str(exc).strip()
    found = re.findall(
        r"size mismatch for (\S+?): copying a param with shape (torch.Size\(\[[\d, ]*\]\)) "
        r"from checkpoint, the shape in current model is (torch.Size\(\[[\d, ]*\]\))",
        text,
    )
    if not found:
        return text.splitlines()[0] if text else type(exc).__name__
    name, got, want = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (
        f"shapes do not fit: {name} is {got.removeprefix('torch.Size')} in the adapter, "
        f"{want.removeprefix('torch.Size')} in the model{more}; was it trained on another base?"
    )


def load_adapters(base_model: Any, refs: list[AdapterRef]) -> Any:
    """A PeftModel over ``base_model`` with every adapter loaded and weighted."""
    from peft import PeftModel

    model: Any = None
    for ref in refs:
        try:
            if model is None:
                model = PeftModel.from_pretrained(base_model, str(ref.path), adapter_name=ref.name)
            else:
                model.load_adapter(str(ref.path), adapter_name=ref.name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UsageError(
                f"cannot load adapter {ref.path} on this base model: {mismatch_summary(exc)}"
            ) from None
        if ref.weight != 1.0:
            set_weight(model, ref.name, ref.weight)
    if model is not None:
        model.set_adapter(refs[0].name)
        model.eval()
    return model


def use_adapter(model: Any, name: str) -> None:
    if name not in model.peft_config:
        known = ", ".join(n for n in model.peft_config)
        raise UsageError(f"no adapter named {name!r} (loaded: {known})")
    model.set_adapter(name)


def combine_adapters(model: Any, refs: list[AdapterRef]) -> str:
    """Add (or replace) the adapter ``combined``: the weighted sum of ``refs``; activate it."""
    if COMBINED in model.peft_config:
        model.delete_adapter(COMBINED)
    if any(getattr(model.peft_config[r.name], "use_dora", False) for r in refs):
        raise UsageError("DoRA adapters cannot be combined; switch between them instead")
    # The weights are already in each adapter's scale; combine at weight 1.
    for ref in refs:
        set_weight(model, ref.name, 1.0)
    try:
        model.add_weighted_adapter(
            adapters=[r.name for r in refs],
            weights=[r.weight for r in refs],
            adapter_name=COMBINED,
            combination_type="cat",
        )
    except (ValueError, NotImplementedError) as exc:
        raise UsageError(f"cannot combine these adapters: {str(exc).splitlines()[0]}") from None
    finally:
        for ref in refs:
            set_weight(model, ref.name, ref.weight)
    # The weighted scales live in the combined A matrices: its own scale must be exactly 1
    # (peft gives it alpha = rank, which rsLoRA would turn into sqrt(rank)).
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and COMBINED in module.scaling:
            module.scaling[COMBINED] = 1.0
    model.set_adapter(COMBINED)
    return COMBINED


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], template: str | None) -> Any:
    """Input ids for a conversation (chat template) or a raw prompt (``template`` None).

    Laid out exactly as training laid out its rows (the BOS where the tokenizer adds one).
    """
    if template is None:
        text = messages[-1]["content"]
        return tokenizer(text, return_tensors="pt")["input_ids"]
    text = with_bos(tokenizer, render(tokenizer, messages, template, prompt=True))
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value if v is not None}
    return {int(value)}


def stop_ids(model: Any, tokenizer: Any, template: str | None) -> list[int]:
    """Every token that ends an answer: the generation config's EOS (an int or a list), the
    tokenizer's EOS and the template's end-of-turn token (``<|im_end|>`` for chatml)."""
    ids = _ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    ids |= _ids(tokenizer.eos_token_id)
    if template is not None:
        ids |= set(end_of_turn_ids(tokenizer, template))
    return sorted(ids)


def cut_at_stop(ids: list[int], stops: list[int]) -> list[int]:
    """``ids`` up to (not including) the first stop token."""
    wanted = set(stops)
    for i, token in enumerate(ids):
        if token in wanted:
            return ids[:i]
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    template: str | None,
    max_new_tokens: int = 64,
) -> str:
    """The greedy continuation of a conversation, cut at the end of the assistant turn.

    Generation stops on any token of :func:`stop_ids`; the answer is cut before the first
    of them *before* decoding (with ``skip_special_tokens`` the end-of-turn token would be
    invisible and whatever the model invented after it would stay in the answer).
    """
    from transformers import GenerationConfig

    ids = prompt_ids(tokenizer, messages, template)
    device = next(model.parameters()).device
    stops = stop_ids(model, tokenizer, template)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops or None,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=torch.ones_like(ids).to(device),
                generation_config=config,
            )
    finally:
        model.train(was_training)
    new = cut_at_stop(out[0, ids.shape[1] :].tolist(), stops)
    text = tokenizer.decode(new, skip_special_tokens=True)
    for marker in end_markers(template or ""):
        text = text.split(marker, 1)[0]
    return text.strip()


def write_samples(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    path: Path,
    *,
    template: str | None,
    max_new_tokens: int,
    system: str | None = None,
) -> Path:
    """Generate for every prompt and write ``### prompt`` / answer blocks to ``path``."""
    blocks = []
    style = PromptStyle(template, system)
    for prompt in prompts:
        answer = generate(
            model,
            tokenizer,
            with_system(style, prompt),
            template=template,
            max_new_tokens=max_new_tokens,
        )
        blocks.append(f"### {prompt}\n{answer}\n")
    write_text(path, "\n".join(blocks))
    return path


def adapter_template(path: Path) -> str | None:
    """The chat template saved beside an adapter, if any."""
    file = path / "chat_template.jinja"
    return file.read_text(encoding="utf-8") if file.is_file() else None


def adapter_record(path: Path) -> dict[str, Any]:
    """The ``llm`` part of an adapter's ``lorakit.json`` (empty when unknown)."""
    try:
        record = json.loads((path / "lorakit.json").read_text())["llm"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return record if isinstance(record, dict) else {}


@dataclass
class PromptStyle:
    """How to prompt a model: a chat template (None: the raw prompt text) and a system message."""

    template: str | None
    system: str | None = None


def adapter_style(
    path: Path | None, tokenizer: Any, chat_template: str | None = None, system: str | None = None
) -> PromptStyle:
    """The prompt an adapter was trained with: its saved template (raw text for
    ``prompt_completion`` / ``text`` data) and its system prompt. ``chat_template`` and
    ``system`` given by the user win; ``path`` None is the base model alone."""
    from lorakit_llm.chat_templates import resolve_template

    saved = adapter_template(path) if path is not None else None
    template: str | None
    if chat_template is None and saved:
        template = saved
    else:
        template, _ = resolve_template(chat_template, tokenizer)
    record = adapter_record(path) if path is not None else {}
    if record.get("dataset_format") in ("prompt_completion", "text"):
        template = None  # trained on raw text: prompt it the same way
    if system is None:
        system = record.get("system_prompt") or None
    return PromptStyle(template, system)


def with_system(style: PromptStyle, prompt: str) -> list[dict[str, str]]:
    """The messages for one prompt: the style's system message (chat templates only) first."""
    system = [{"role": "system", "content": style.system}] if style.system else []
    return [*(system if style.template is not None else []), {"role": "user", "content": prompt}]
