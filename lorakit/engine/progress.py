"""Training progress: the bar of :mod:`lorakit.progress` on a terminal, plain periodic
lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console

from lorakit.progress import Bar


class TrainProgress:
    def __init__(
        self, total: int, start: int, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.console = console or Console(stderr=False)
        self.total = total
        self.enabled = enabled
        self.every = max(1, total // 20)
        self.t0 = time.perf_counter()
        self.start = start
        self.eval = ""
        bar = Bar(
            "train",
            total,
            completed=start,
            enabled=enabled,
            console=self.console,
            fields={"loss": "-", "rate": "", "eval": ""},
            columns=("loss {task.fields[loss]}{task.fields[eval]}", "{task.fields[rate]}"),
        )
        self.bar = bar if bar.shown else None

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(1e-9, time.perf_counter() - self.t0)
        evaluated = metrics.get("eval_loss")
        if evaluated is not None:
            self.eval = f"  eval loss {evaluated:.4f}"
        if self.bar is not None:
            self.bar.update(
                step, loss=f"{metrics['loss']:.4f}", rate=f"{rate:.2f} it/s", eval=self.eval
            )
        elif step % self.every == 0 or step == self.total or evaluated is not None:
            shown = f"  eval loss {evaluated:.4f}" if evaluated is not None else ""
            print(
                f"step {step}/{self.total}  loss {metrics['loss']:.4f}{shown}  "
                f"lr {metrics['lr']:.3g}  {rate:.2f} it/s",
                file=sys.stdout,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
