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
from lorakit.runfolder import METRICS, METRICS_LIMIT, RunFolder


class JsonlTracker:
    """One JSON object per logged step in ``output_dir/metrics.jsonl`` (through the run
    folder: the rows kept on a resume replace the file, then rows are appended, never
    through a link)."""

    def __init__(self, output_dir: Path, config: Any = None, start_step: int = 0) -> None:
        run = RunFolder(output_dir)
        self.path = run.where(METRICS)
        kept = []
        if run.lstat(METRICS) is not None:
            for line in run.read_text(METRICS, limit=METRICS_LIMIT).splitlines():
                try:
                    if json.loads(line).get("step", 0) <= start_step:
                        kept.append(line + "\n")
                except (ValueError, AttributeError):
                    break  # a line cut by a crash: drop it and what follows
        run.write_text(METRICS, "".join(kept))
        self._file = run.open_append(METRICS)

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


def read_metrics(output_dir: str | Path, since: int = 0) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (from row ``since``; a cut or foreign line ends them)."""
    return RunFolder(output_dir).metrics(since)


@hookimpl
def register_trackers(register: Callable[[TrackerSpec], None]) -> None:
    register(TrackerSpec("tensorboard", TensorBoardTracker, "TensorBoard event files"))
    register(TrackerSpec("jsonl", JsonlTracker, f"{METRICS}, one object per step"))
