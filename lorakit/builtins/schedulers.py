"""Built-in learning-rate schedules, each with linear warmup."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lorakit import hookimpl
from lorakit.registry import SchedulerSpec


def _lambda(shape: Callable[[float], float], warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        span = max(1, total - warmup)
        return max(0.0, shape(min(1.0, (step - warmup) / span)))

    return factor


def _make(shape: Callable[[float], float]) -> Callable[..., Any]:
    def factory(optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
        import torch

        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lambda(shape, warmup_steps, total_steps)
        )

    return factory


def cosine_with_restarts(
    optimizer: Any, warmup_steps: int, total_steps: int, num_cycles: int = 3
) -> Any:
    import torch

    def shape(p: float) -> float:
        return 0.0 if p >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * p) % 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lambda(shape, warmup_steps, total_steps))


@hookimpl
def register_schedulers(register: Callable[[SchedulerSpec], None]) -> None:
    register(SchedulerSpec("constant", _make(lambda p: 1.0), "constant after warmup"))
    register(SchedulerSpec("linear", _make(lambda p: 1.0 - p), "linear decay to 0"))
    register(
        SchedulerSpec(
            "cosine", _make(lambda p: 0.5 * (1.0 + math.cos(math.pi * p))), "cosine decay to 0"
        )
    )
    register(
        SchedulerSpec(
            "cosine_with_restarts", cosine_with_restarts, "cosine with hard restarts (num_cycles)"
        )
    )
