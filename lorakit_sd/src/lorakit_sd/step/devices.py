"""Where the sd backend's modules are: device comparison, previews' moves, memory format."""

from __future__ import annotations

from typing import Any

import torch


def use_channels_last(setting: bool | None, device: Any, unet: bool) -> bool:
    """``sd.channels_last`` as set, or (null) on for a UNet on a CUDA device."""
    if setting is not None:
        return setting
    return unet and getattr(device, "type", "") == "cuda"


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


def same_device(a: Any, b: Any) -> bool:
    """Whether two devices are the same one: ``cuda`` and ``cuda:0`` are, on device 0.

    ``accelerator.device`` says ``cuda`` while parameters report ``cuda:0``: comparing the
    objects with ``!=`` calls them different. An index-less device means the current one.
    """
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index:
        return True
    current = _current_index(a.type)
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _current_index(kind: str) -> int:
    if kind == "cpu":
        return 0
    module = getattr(torch, kind, None)
    try:
        if module is not None and module.is_available():
            return int(module.current_device())
    except (AttributeError, RuntimeError):
        pass
    return 0


def modules_elsewhere(modules: Any, device: Any, device_of: Any = _device) -> list[Any]:
    """The modules that are not on ``device`` (moved there for previews, then back)."""
    return [m for m in modules if not same_device(device_of(m), device)]
