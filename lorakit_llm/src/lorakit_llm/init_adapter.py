"""``init_adapter``: start training from an existing PEFT adapter folder.

The folder (or a run folder holding ``adapter/``) must belong to the base: every module its
tensors adapt must exist in the base model with the shapes the tensors expect (LoRA A is
``rank × in_features``, B ``out_features × rank``). Anything else is one line naming the
adapter and the first mismatch. The adapter is loaded as the trainable ``default`` slot with
its own rank and alpha; for DPO it is loaded a second time, frozen, as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.api import UsageError

PREFIX = "base_model.model."
WEIGHTS = "adapter_model.safetensors"


def adapter_folder(path: str | Path) -> Path:
    """The PEFT adapter folder ``path`` names (itself, or a run folder's ``adapter/``)."""
    folder = Path(path).expanduser()
    for candidate in (folder, folder / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            if not (candidate / WEIGHTS).is_file():
                raise UsageError(f"init_adapter: {candidate} has no {WEIGHTS}")
            return candidate
    raise UsageError(
        f"init_adapter: {folder} is not a PEFT adapter folder (no adapter_config.json)"
    )


def _shapes(file: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118


def _expected(module: Any, part: str, shape: tuple[int, ...]) -> str | None:
    """Why a tensor of ``shape`` cannot be ``part`` (lora_A, lora_B ...) of ``module``."""
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return "is not a linear layer"
    out_features, in_features = weight.shape
    if part in ("lora_embedding_A", "lora_embedding_B"):
        out_features, in_features = in_features, out_features
    if part in ("lora_A", "lora_embedding_A") and (len(shape) != 2 or shape[1] != in_features):
        return f"takes {in_features} inputs, the adapter's {part} {list(shape)}"
    if part in ("lora_B", "lora_embedding_B") and (len(shape) != 2 or shape[0] != out_features):
        return f"has {out_features} outputs, the adapter's {part} {list(shape)}"
    return None


def check_adapter(model: Any, folder: Path) -> dict[str, Any]:
    """The adapter's config, after checking its tensors against ``model`` (the bare base)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"init_adapter: cannot read {folder / 'adapter_config.json'}: {exc}"
        ) from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise UsageError(f"init_adapter: {folder} is a {config.get('peft_type')} adapter, not LoRA")
    modules = dict(model.named_modules())
    for key, shape in _shapes(folder / WEIGHTS).items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        parts = name.split(".")
        for at, piece in enumerate(parts):
            if piece.startswith("lora_") or piece == "modules_to_save":
                path, part = ".".join(parts[:at]), piece
                break
        else:
            path, part = ".".join(parts[:-1]), ""
        if path not in modules:
            raise UsageError(
                f"init_adapter: {folder} adapts '{path}', which {model.config.model_type} base "
                f"has no module of that name: the adapter belongs to another model"
            )
        why = _expected(modules[path], part, shape) if part.startswith("lora_") else None
        if why and part != "lora_magnitude_vector":
            raise UsageError(
                f"init_adapter: {folder}: module '{path}' of the base {why}: the adapter "
                f"belongs to another model"
            )
    return config


def load_init_adapter(model: Any, path: str | Path, *, reference: bool, log: Any) -> Any:
    """``model`` (the bare base) with the adapter at ``path`` trainable, and for DPO a
    frozen copy in the ``reference`` slot."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    from lorakit_llm.preference.method import REFERENCE

    folder = adapter_folder(path)
    config = check_adapter(model, folder)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        if reference:
            peft_model.load_adapter(str(folder), adapter_name=REFERENCE, is_trainable=False)
            assert isinstance(peft_model.base_model, BaseTuner)  # a LoRA adapter's tuner
            peft_model.base_model.set_adapter("default")
    except (ValueError, KeyError, RuntimeError) as exc:
        from lorakit_llm.generate import mismatch_summary

        raise UsageError(f"init_adapter: cannot load {folder}: {mismatch_summary(exc)}") from None
    log(
        f"llm: starting from init_adapter {folder} (rank {config.get('r')}, alpha "
        f"{config.get('lora_alpha')}, {', '.join(sorted(config.get('target_modules') or []))})"
    )
    return peft_model
