"""The training engine. ``train`` and ``RunResult`` import torch and accelerate when first
used; ``lorakit.engine.runlock`` (the run-folder lock) imports nothing heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorakit.engine.quiet import quiet_deepspeed

quiet_deepspeed()  # before anything imports deepspeed (logging only: no heavy import)

if TYPE_CHECKING:
    from lorakit.engine.trainer import RunResult, train

__all__ = ["RunResult", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lorakit.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'lorakit.engine' has no attribute {name!r}")
