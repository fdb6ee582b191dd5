"""Progress: a rich bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(
        self, total: int, start: int, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.console = console or Console(stderr=False)
        self.total = total
        self.enabled = enabled
        self.bar: Progress | None = None
        self.every = max(1, total // 20)
        self.t0 = time.perf_counter()
        self.start = start
        self.eval = ""
        if enabled and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}{task.fields[eval]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task(
                "train", total=total, completed=start, loss="-", rate="", eval=""
            )
            self.bar.start()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(1e-9, time.perf_counter() - self.t0)
        evaluated = metrics.get("eval_loss")
        if evaluated is not None:
            self.eval = f"  eval loss {evaluated:.4f}"
        if self.bar is not None:
            self.bar.update(
                self.task, completed=step, loss=f"{metrics['loss']:.4f}",
                rate=f"{rate:.2f} it/s", eval=self.eval,
            )  # fmt: skip
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
            self.bar.stop()
