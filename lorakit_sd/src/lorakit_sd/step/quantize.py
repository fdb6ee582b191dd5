"""``sd.base_quantization``: the SD3 / FLUX.1 transformer's frozen weights in fp8 or NF4.

What 24 GB cards need for FLUX.1: the base stored in 8 or 4 bits while the LoRA trains in
float32 on top. Both go through diffusers' quantization configs — ``fp8``: torchao's
float8 weight-only (``TorchAoConfig("float8wo_e4m3")``), ``nf4``: bitsandbytes' 4-bit
NormalFloat (``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``), compute
in the run's dtype. Both need a CUDA GPU and their library: :func:`check` refuses, in one
line before anything loads, where either is missing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lorakit.api import ConfigError
from lorakit_sd.models import is_single_file

#: kind -> (library module, pip name, what it is)
KINDS = {
    "fp8": ("torchao", "torchao", "float8 weight-only (torchao)"),
    "nf4": ("bitsandbytes", "bitsandbytes", "4-bit NF4 (bitsandbytes)"),
}


def check(sec: Any, label: str, transformer_family: bool) -> None:
    """Refuse ``sd.base_quantization`` and ``sd.group_offload`` where they cannot run (one
    line, naming the key)."""
    check_offload(sec, label, transformer_family)
    kind = getattr(sec, "base_quantization", None)
    if kind is None:
        return
    key = "sd.base_quantization"
    if not transformer_family:
        raise _not_for(f"{key} {kind}", label)
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"sd.base_quantization {kind}: {KINDS[kind][2]} weights need a CUDA GPU and this "
            "machine has none (remove it to train on the base's dtype)",
            key=key,
        )
    module, pip, what = KINDS[kind]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"sd.base_quantization {kind}: {what} needs {pip} (pip install {pip})", key=key
        )


def _not_for(what: str, label: str) -> ConfigError:
    from lorakit_sd import families

    which = [f.label for f in families.all_families() if f.denoiser_attr == "transformer"]
    return ConfigError(
        f"{what} applies to the transformer families ({', '.join(which)}), not {label}",
        key=what.split()[0],
    )


def check_offload(sec: Any, label: str, transformer_family: bool) -> None:
    """``sd.group_offload``: a transformer family's, on a CUDA GPU."""
    if not getattr(sec, "group_offload", False):
        return
    if not transformer_family:
        raise _not_for("sd.group_offload", label)
    if getattr(sec, "base_quantization", None):
        raise ConfigError(
            "streams the base's own weights; it does not combine with sd.base_quantization "
            "(remove one)",
            key="sd.group_offload",
        )
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "streams the transformer's blocks from CPU memory to a CUDA GPU and this machine "
            "has none (remove it)",
            key="sd.group_offload",
        )


def quantization_config(kind: str, compute_dtype: Any) -> Any:
    """The diffusers quantization config of ``kind`` (``fp8`` or ``nf4``)."""
    if kind == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    from diffusers import TorchAoConfig

    return TorchAoConfig("float8wo_e4m3")


def quantize_transformer(model: Any, sec: Any, base_model: str, compute_dtype: Any) -> Any:
    """Reload ``model``'s transformer from its own weights through diffusers' quantizer.

    ``from_single_file`` takes the state dict as it is (diffusers' names) with the
    transformer config of the base (its diffusers folder or hub id, else ``sd.base_config``
    or the family's default repo for a single file); the pipeline's transformer is replaced.
    """

    kind = sec.base_quantization
    config_source = sec.base_config or (
        model.spec.default_config_repo if is_single_file(base_model) else base_model
    )
    transformer = model.denoiser
    if getattr(transformer, "is_quantized", False):
        raise ConfigError(
            f"sd.base_quantization {kind}: the base transformer is already quantized (GGUF); "
            "remove the key",
            key="sd.base_quantization",
        )
    cls = type(transformer)
    state = {k: v.detach() for k, v in transformer.state_dict().items()}
    quantized = cls.from_single_file(
        state,
        config=config_source,
        subfolder="transformer",
        torch_dtype=compute_dtype,
        quantization_config=quantization_config(kind, compute_dtype),
    )
    model.pipe.transformer = quantized
    return quantized
