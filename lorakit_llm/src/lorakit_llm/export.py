"""What a run leaves behind and what the CLI verbs make of it.

- the ``peft`` exporter: ``adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors``
  + the chat template + ``lorakit.json``), written atomically, with lorakit's provenance in
  the safetensors header and in ``lorakit.json``; ``PeftModel.from_pretrained`` loads it;
- ``lorakit merge``: base + weighted adapters baked into a full model folder (safetensors);
- ``lorakit sample``: greedy generations for prompts, printed and written to a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.api import AdapterExport, UsageError, __version__, atomic_dir, half_dtype, write_text
from lorakit_llm.export_view import base_reference

DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def _base_gguf_file(base: str) -> str | None:
    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.name
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        return found[0].name if len(found) == 1 else None
    return None


def write_provenance(view: AdapterExport, directory: Path, metadata: dict[str, str]) -> None:
    """lorakit's provenance in an adapter folder PEFT wrote: in the safetensors header (next
    to peft's ``{"format": "pt"}``), in ``lorakit.json``, and the chat template."""
    from safetensors.torch import load_file, save_file

    weights = directory / "adapter_model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt", **metadata})
    if view.chat_template:
        (directory / "chat_template.jinja").write_text(view.chat_template, encoding="utf-8")
    record = {
        "lorakit": metadata.get("lorakit.version", __version__),
        "config_hash": metadata.get("lorakit.config_hash"),
        "step": metadata.get("lorakit.step"),
        "base_model": view.base_model,
        "base_gguf_file": _base_gguf_file(view.base_model),
        "llm": {
            "dataset_format": metadata.get("lorakit.llm.dataset_format"),
            "chat_template": metadata.get("lorakit.llm.chat_template"),
            "system_prompt": metadata.get("lorakit.llm.system_prompt"),
        },
        "plugins": json.loads(metadata.get("lorakit.plugins", "{}")),
        "config": json.loads(metadata["lorakit.config"]) if "lorakit.config" in metadata else None,
    }
    (directory / "lorakit.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


def export_peft(
    view: AdapterExport, directory: Path, name: str, metadata: dict[str, str]
) -> list[Path]:
    """Exporter ``peft``: ``directory/adapter/``, replaced as a whole."""
    if view.save_pretrained is None:
        raise UsageError("the peft exporter writes adapters of the llm backend only")
    target = Path(directory) / "adapter"
    with atomic_dir(target) as tmp:
        view.save_pretrained(tmp)
        write_provenance(view, tmp, metadata)
    return [target]


def inference_dtype(name: str | None = None) -> Any:
    """float32 on CPU, bf16 on a GPU that has it (else fp16), or the dtype named."""
    import torch

    from lorakit_llm.loading import torch_dtype

    if name and name != "auto":
        if name not in DTYPE_NAMES:
            raise UsageError(f"--dtype: one of float32, float16, bfloat16 (got {name!r})")
        return torch_dtype(DTYPE_NAMES[name])
    if torch.cuda.is_available():
        return half_dtype()
    return torch.float32


def load_for_inference(
    base: str, loras: list[tuple[str, float]], dtype: str | None = None, loader: str | None = None
) -> tuple[Any, Any, list[Any]]:
    """``(model, tokenizer, adapter refs)``: the base on the best device, adapters loaded."""
    import torch

    from lorakit_llm.generate import load_adapters, parse_adapters
    from lorakit_llm.loading import load_base

    refs = parse_adapters(loras)
    model, tokenizer = load_base(base, dtype=inference_dtype(dtype), loader=loader)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    if refs:
        model = load_adapters(model, refs)
    return model, tokenizer, refs


def merge_command(
    base: str, loras: list[tuple[str, float]], output: Path, dtype: str | None
) -> Path:
    """``lorakit merge``: bake the weighted adapters into the base; save a model folder.

    The folder is a plain full-precision transformers model (``config.json``, safetensors
    weights, the tokenizer) at ``dtype``, also for a ``.gguf`` base: its weights are
    dequantized on load and the LoRA is merged into them, so ``from_pretrained(folder)``
    loads it without the ``gguf`` package.
    """
    from lorakit_llm.generate import adapter_template, load_adapters, parse_adapters
    from lorakit_llm.loading import load_base

    if not loras:
        raise UsageError("merge: pass at least one --adapter")
    out_dtype = inference_dtype(dtype or "float16")
    refs = parse_adapters(loras)
    # The base in the dtype the merged model is written in: a bf16 7B stays 13.5 GB in
    # memory, not 27 (peft adds each update in float32 and rounds once).
    model, tokenizer = load_base(base, dtype=out_dtype)
    model = load_adapters(model, refs)
    merged = model.merge_and_unload(adapter_names=[r.name for r in refs])
    merged = merged.to(out_dtype)
    template = adapter_template(refs[0].path)
    if template:
        tokenizer.chat_template = template
    adapters = []
    for ref in refs:
        info = ref.path / "lorakit.json"
        record = json.loads(info.read_text()) if info.is_file() else {}
        adapters.append(
            {
                "path": str(ref.path.resolve()),
                "weight": ref.weight,
                "config_hash": record.get("config_hash"),
            }
        )
    output = Path(output)
    with atomic_dir(output) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        provenance = {
            "lorakit": __version__,
            "base_model": base_reference(base),
            "base_gguf_file": _base_gguf_file(base),
            "adapters": adapters,
            "dtype": str(out_dtype).replace("torch.", ""),
        }
        (tmp / "lorakit.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    return output


def sample_command(
    base: str,
    loras: list[tuple[str, float]],
    prompts: list[str],
    output: Path,
    seed: int = 42,
    steps: int | None = None,
    config: Any = None,
) -> list[Path]:
    """``lorakit sample``: greedy answers for ``prompts``, printed and written to a file."""
    import torch

    from lorakit_llm.generate import adapter_style, combine_adapters, generate, with_system
    from lorakit_llm.section import LLMSection

    section = (config.sections.get("llm") if config is not None else None) or LLMSection()
    if config is not None and not loras:
        # After training: the run's own adapter, when it has one.
        trained = Path(config.train.output_dir) / "adapter"
        if (trained / "adapter_config.json").is_file():
            loras = [(str(trained), 1.0)]
    torch.manual_seed(seed)
    loader = config.train.model_loader if config is not None else None
    model, tokenizer, refs = load_for_inference(base, loras, loader=loader)
    if len(refs) > 1:
        combine_adapters(model, refs)
    # Prompted as the (first) adapter was trained: its template, format and system prompt.
    style = adapter_style(
        refs[0].path if refs else None, tokenizer, section.chat_template, section.system_prompt
    )
    blocks = []
    for prompt in prompts:
        answer = generate(
            model,
            tokenizer,
            with_system(style, prompt),
            template=style.template,
            max_new_tokens=steps or section.sample_max_new_tokens,
        )
        print(f"### {prompt}\n{answer}\n")
        blocks.append(f"### {prompt}\n{answer}\n")
    path = Path(output) / "samples.txt"
    write_text(path, "\n".join(blocks))
    return [path]
