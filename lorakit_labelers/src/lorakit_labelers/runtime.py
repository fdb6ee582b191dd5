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


def pick_dtype(device: str, dtype: str) -> Any:
    """``auto`` is float16 on a GPU and float32 on the CPU."""
    import torch

    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
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
