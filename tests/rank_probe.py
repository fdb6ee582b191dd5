"""A test plugin: with LORAKIT_TEST_RANK_PROBE set, every process of a run records how much
of the trained module it holds (frozen and LoRA tensors apart) and the losses it logs.

Registered through an entry point in the multi-process tests, so it sees the real sd and
llm backends exactly as a third party's plugin would.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lorakit.api import hookimpl

LORAKIT_PLUGIN_API = 1


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _local(param: Any) -> int:
    """Elements this process holds: its ZeRO-3 slice, or the whole tensor."""
    return int(param.ds_tensor.numel()) if hasattr(param, "ds_tensor") else int(param.numel())


@hookimpl
def on_train_start(run: Any) -> None:
    if not os.environ.get("LORAKIT_TEST_RANK_PROBE"):
        return
    shares: dict[str, dict[str, int]] = {}
    for param in run.backend.trainable_module().parameters():
        kind = "lora" if param.requires_grad else "frozen"
        share = shares.setdefault(kind, {"local": 0, "full": 0, "data": 0})
        share["local"] += _local(param)
        share["full"] += int(getattr(param, "ds_numel", param.numel()))
        share["data"] += int(param.data.numel())  # what a forward outside DeepSpeed would see
    run.output_dir.mkdir(parents=True, exist_ok=True)
    (run.output_dir / f"rank{_rank()}.shares.json").write_text(json.dumps(shares))


@hookimpl
def on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    if os.environ.get("LORAKIT_TEST_RANK_PROBE"):
        with open(run.output_dir / f"rank{_rank()}.losses", "a") as f:
            f.write(f"{metrics['loss']!r}\n")
