"""Built-in trackers: TensorBoard event files and metrics.jsonl.

A tracker factory is called as ``factory(output_dir, config, start_step)``; on a resumed
run ``start_step`` is the checkpoint's step and the tracker drops anything logged after it,
so a resumed run's metrics read like an uninterrupted run's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakit import hookimpl
from lorakit.registry import TrackerSpec


class JsonlTracker:
    """One JSON object per logged step in ``output_dir/metrics.jsonl``."""

    def __init__(self, output_dir: Path, config: Any = None, start_step: int = 0) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= start_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    break  # a line cut by a crash: drop it and what follows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._file.writelines(kept)
        self._file.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardTracker:
    """Scalars under ``output_dir/tensorboard`` (``train/loss``, ``train/lr``, ...)."""

    def __init__(self, output_dir: Path, config: Any = None, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@hookimpl
def register_trackers(register: Callable[[TrackerSpec], None]) -> None:
    register(TrackerSpec("tensorboard", TensorBoardTracker, "TensorBoard event files"))
    register(TrackerSpec("jsonl", JsonlTracker, "metrics.jsonl, one object per step"))
