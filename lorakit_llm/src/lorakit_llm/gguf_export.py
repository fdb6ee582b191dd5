"""``lorakit export ADAPTER --to gguf``: a PEFT LoRA as a llama.cpp GGUF adapter file.

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes and what ``llama-cli
--lora`` / ``llama-server --lora`` load on the same base GGUF:

- metadata ``general.architecture`` (``llama``, ``qwen2`` ...), ``general.type = adapter``,
  ``adapter.type = lora``, ``adapter.lora.alpha`` (llama.cpp scales by alpha / rank, so an
  rsLoRA adapter is written with the alpha that gives the same scale);
- for every adapted weight, ``<gguf name>.weight.lora_a`` ([rank, in] in PyTorch order) and
  ``.lora_b`` ([out, rank]), named as the base's tensors are named in GGUF
  (``blk.0.attn_q.weight`` → ``blk.0.attn_q.weight.lora_a``);
- for Llama-family models the rows of ``lora_b`` of q/k get llama.cpp's rotary head
  permutation, exactly as the converter permutes the base's q/k weights.

Only what llama.cpp can apply is exported: LoRA on linear layers, one alpha and one rank for
all (no DoRA, no ``modules_to_save``, no per-module rank or alpha patterns).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, atomic_path

#: transformers model_type → (gguf MODEL_ARCH member, whether q/k rows are permuted).
ARCHS = {
    "llama": ("LLAMA", True),
    "mistral": ("LLAMA", True),
    "qwen2": ("QWEN2", False),
}


def _permute(weight: Any, n_head: int) -> Any:
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def base_config(adapter: Path, base: str | None) -> Any:
    """The base model's transformers config: ``--base``, else the adapter's own base."""
    from transformers import AutoConfig

    from lorakit_llm.loading import resolve_base

    if base is None:
        from lorakit_llm.generate import read_adapter_config

        base = read_adapter_config(adapter).get("base_model_name_or_path")
        base = base if isinstance(base, str) else None
        gguf_file = _record(adapter).get("base_gguf_file")
        if base and gguf_file and Path(base, gguf_file).is_file():
            base = str(Path(base, gguf_file))
    if not base:
        raise UsageError("export --to gguf: pass --base (the adapter does not name its base)")
    source = resolve_base(base)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read the config of {source.label}: {exc}") from None


def _record(adapter: Path) -> dict[str, Any]:
    try:
        data = json.loads((adapter / "lorakit.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_exportable(adapter: Path, peft: dict[str, Any]) -> None:
    """Refuse what llama.cpp's GGUF LoRA cannot hold, naming it."""
    problems = [
        what
        for what, bad in (
            ("DoRA", peft.get("use_dora")),
            ("modules_to_save", peft.get("modules_to_save")),
            ("per-module ranks (rank_pattern)", peft.get("rank_pattern")),
            ("per-module alphas (alpha_pattern)", peft.get("alpha_pattern")),
        )
        if bad
    ]
    if problems:
        raise UsageError(
            f"{adapter}: llama.cpp's GGUF LoRA cannot hold {', '.join(problems)}; "
            f"merge it instead (lorakit merge) and convert the merged model"
        )


def lora_pairs(adapter: Path, tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``module -> {"lora_a": A, "lora_b": B}`` of a PEFT adapter's tensors."""
    pairs: dict[str, dict[str, Any]] = {}
    for key, array in tensors.items():
        for part, suffix in (("lora_A", "lora_a"), ("lora_B", "lora_b")):
            marker = f".{part}."
            if marker not in key:
                continue
            module = key.split(marker)[0].removeprefix("base_model.model.")
            pairs.setdefault(module, {})[suffix] = array
            break
        else:
            raise UsageError(f"{adapter}: tensor {key} is not a LoRA A/B matrix; cannot export")
    if not pairs:
        raise UsageError(f"{adapter}: no LoRA tensors in adapter_model.safetensors")
    return pairs


def export_gguf(adapter: Path, output: Path | None = None, base: str | None = None) -> Path:
    """Write ``adapter`` (a PEFT folder) as a GGUF LoRA adapter; the file's path."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from lorakit_llm.generate import adapter_dir, read_adapter_config

    adapter = adapter_dir(adapter)
    peft = read_adapter_config(adapter)
    check_exportable(adapter, peft)
    rank, alpha = peft.get("r"), peft.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise UsageError(
            f"r ({rank!r}) and lora_alpha ({alpha!r}) must be numbers",
            where=adapter / "adapter_config.json",
        )
    config = base_config(adapter, base)
    if config.model_type not in ARCHS:
        known = ", ".join(sorted(ARCHS))
        raise UsageError(
            f"export --to gguf: {config.model_type} models are not supported (supported: {known})"
        )
    arch_name, permute = ARCHS[config.model_type]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    alpha = float(alpha)
    if peft.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # llama.cpp scales by alpha / rank
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head

    pairs = lora_pairs(adapter, load_file(str(adapter / "adapter_model.safetensors")))

    output = Path(output) if output else adapter.parent / f"{adapter.parent.name}-lora.gguf"
    if output.is_dir():
        output = output / f"{adapter.parent.name}-lora.gguf"
    with atomic_path(output) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(adapter.parent.name)
        for module in sorted(pairs):
            pair = pairs[module]
            if set(pair) != {"lora_a", "lora_b"}:
                raise UsageError(f"{adapter}: {module} lacks its lora_A or lora_B matrix")
            target = names.get_name(module)
            if target is None:
                raise UsageError(
                    f"{adapter}: {module} has no GGUF counterpart in {config.model_type} "
                    f"models; llama.cpp cannot apply it"
                )
            a = pair["lora_a"].astype(np.float32)
            b = pair["lora_b"].astype(np.float32)
            if permute and module.endswith("q_proj"):
                b = _permute(b, n_head)
            elif permute and module.endswith("k_proj"):
                b = _permute(b, n_kv)
            writer.add_tensor(f"{target}.weight.lora_a", np.ascontiguousarray(a))
            writer.add_tensor(f"{target}.weight.lora_b", np.ascontiguousarray(b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return output


def export_command(
    source: Path, to: str, output: Path | None = None, base: str | None = None
) -> list[Path]:
    """``lorakit export ADAPTER --to gguf [--base BASE] [-o FILE]``."""
    if to.lower() != "gguf":
        raise UsageError(f"export: llm adapters convert to gguf only (got --to {to})")
    return [export_gguf(Path(source), output, base)]
