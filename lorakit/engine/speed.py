"""Speed settings that change nothing but speed: TF32 matmuls, ``torch.compile``.

Each is a config key (``allow_tf32``, ``torch_compile``); tests train with and without it
and compare the losses and the LoRA.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit.errors import UsageError

#: The first compute capability with TF32 tensor cores (Ampere).
TF32_CAPABILITY = (8, 0)


def tf32_wanted(setting: bool | None, capability: tuple[int, int] | None) -> bool:
    """Whether TF32 goes on: ``allow_tf32`` as set, or (null) on a CUDA device of compute
    capability 8.0 or newer; never without a CUDA device (``capability`` None)."""
    if capability is None:
        return False
    if setting is not None:
        return setting
    return tuple(capability) >= TF32_CAPABILITY


def tf32_header(on: bool) -> str:
    """The run header's words for it (nothing when TF32 is off)."""
    return ", TF32 matmuls" if on else ""


def apply_tf32(setting: bool | None, device: Any) -> bool:
    """Set torch's TF32 switches for a run on ``device``; whether TF32 is on.

    On CPU nothing is touched (the switches only concern CUDA kernels).
    """
    if getattr(device, "type", str(device)) != "cuda":
        return False
    on = tf32_wanted(setting, torch.cuda.get_device_capability(device))
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


def compile_module(module: Any, backend: str = "inductor") -> Any:
    """Compile ``module`` in place (``nn.Module.compile``): the same object, its calls go
    through TorchDynamo and ``backend``, its parameters and state dict keys stay as they are.
    An unknown backend is refused in one line."""
    from torch._dynamo import list_backends

    known = set(list_backends(exclude_tags=()))
    if backend not in known:
        raise UsageError(
            f"torch_compile_backend: unknown backend {backend!r} ({', '.join(sorted(known))})"
        )
    module.compile(backend=backend)
    return module
