"""Shared by the model labelers: device and dtype choice, and loading through
``from_pretrained`` with errors a user can act on. torch and transformers are imported
inside the functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lorakit.api import UsageError


def pick_device(labeler: str, device: str) -> str:
    """``auto`` is ``cuda`` when a CUDA GPU is present, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"labeler {labeler}: device {device} asked for, but no CUDA GPU is visible"
        )
    return device


def pick_dtype(device: str, dtype: str, gpu: str = "float16") -> Any:
    """``auto`` is ``gpu`` (float16 unless said otherwise) on a GPU and float32 on the CPU;
    a bfloat16 ``gpu`` falls back to float16 on a GPU without bfloat16."""
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            dtype = "float32"
        elif gpu == "bfloat16" and not torch.cuda.is_bf16_supported():
            dtype = "float16"
        else:
            dtype = gpu
    return getattr(torch, dtype)


def _offline() -> bool:
    from lorakit.api import env_flag

    return env_flag("HF_HUB_OFFLINE")


def check_model(labeler: str, model: str, model_types: tuple[str, ...], what: str) -> None:
    """Fail early, in one line, when ``model`` cannot be found or is not a ``what`` model."""
    from transformers import AutoConfig

    # A hub id is "name" or "owner/name"; anything else is meant as a folder.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_local and not Path(model).expanduser().exists():
        raise UsageError(f"labeler {labeler}: model folder {model} does not exist")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _offline() and not Path(model).expanduser().exists():
            reason = (
                "not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it once "
                "online, or pass --option model=FOLDER"
            )
        raise UsageError(f"labeler {labeler}: cannot load model {model}: {reason}") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in model_types:
        raise UsageError(
            f"labeler {labeler}: {model} is a '{model_type}' model, not a {what} model"
        )


def load(labeler: str, loader: Any, model: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(model, **kwargs)``; a failure is a one-line error.

    transformers' own progress bars (weights loading, downloads) show only when stdout is a
    terminal, like lorakit's.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if bars and not sys.stdout.isatty():
        hf_logging.disable_progress_bar()
    try:
        return loader.from_pretrained(model, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"labeler {labeler}: cannot load {loader.__name__} from {model}: {reason}"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_model(labeler: str, loader: Any, model: str, dtype: Any) -> Any:
    """:func:`load` for weights: a checkpoint that leaves some of the model's weights
    unset (another layout, such as a remote-code repository) is refused in one line
    instead of captioning with random weights."""
    loaded, info = load(labeler, loader, model, dtype=dtype, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UsageError(
            f"labeler {labeler}: {model} does not hold the weights {loader.__name__} needs "
            f"({len(missing)} missing, e.g. {missing[0]}): is it a model in transformers' "
            "own layout?"
        )
    return loaded


def load_processor(labeler: str, model: str) -> Any:
    """``AutoProcessor.from_pretrained(model)``; without torchvision, the processor without
    its video part.

    The processors of video-capable models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) carry a video
    processor that needs torchvision even when only images are processed; their image
    processors have a PIL version that transformers picks when torchvision is missing.
    Without torchvision the processor is built from its image processor, tokenizer and
    chat template alone: images work, videos do not (and are never asked for here).
    """
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return load(labeler, AutoProcessor, model)
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    base: Any
    try:
        base = PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(model))]
    except KeyError:
        return load(labeler, AutoProcessor, model)
    parts = [a for a in base.get_attributes() if a != "video_processor"]
    if len(parts) == len(base.get_attributes()):
        return load(labeler, base, model)
    images_only = type(base.__name__, (base,), {"get_attributes": classmethod(lambda _: parts)})
    return load(labeler, images_only, model)
