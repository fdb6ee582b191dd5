"""The progress bar of long work (training steps, labeled images): one rich bar, on a
terminal only. Nothing is drawn when the console is not a terminal; callers that want plain
lines there (training) print them themselves. rich is imported when a bar is made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class Bar:
    """``label``, a bar, ``done/total``, elapsed and remaining time, and ``fields`` (rich
    format strings over the task's fields, e.g. ``"loss {task.fields[loss]}"``)."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        completed: int = 0,
        enabled: bool = True,
        console: Console | None = None,
        fields: dict[str, str] | None = None,
        columns: tuple[str, ...] = (),
    ) -> None:
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = console or Console()
        if not console.is_terminal:
            return
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            *(TextColumn(c) for c in columns),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task(label, total=total, completed=completed, **(fields or {}))
        self.bar.start()

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def update(self, completed: int, **fields: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
