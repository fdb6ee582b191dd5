"""The hooks a lorakit plugin can implement.

A plugin is a module (or object) with functions decorated by ``@lorakit.hookimpl`` whose
names match the specs below, registered through the ``lorakit`` entry-point group::

    [project.entry-points.lorakit]
    wd14 = "lorakit_wd14.plugin"

Registration hooks take a ``register`` callback, so one plugin can register several
things. Lifecycle hooks observe a run; they must not change the model or the optimizer.
Every hook is documented in docs/plugin-hooks.md (a test enforces it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

# Imported at run time (these modules are torch-free), so typing.get_type_hints resolves
# every hook's annotations.
from lorakit.backend_plugin import BackendPlugin
from lorakit.registry import (
    DatasetReaderSpec,
    ExporterSpec,
    LabelerSpec,
    ModelLoaderSpec,
    OptimizerSpec,
    RewardSpec,
    SchedulerSpec,
    TrackerSpec,
)

if TYPE_CHECKING:
    from lorakit.backend import Backend
    from lorakit.config.schema import Config

hookspec = pluggy.HookspecMarker("lorakit")


@dataclass
class RunInfo:
    """What the lifecycle hooks receive: read it, don't change the run through it.

    ``config`` is the run's validated config, ``backend`` its :class:`lorakit.backend.Backend`,
    ``outputs`` the exported files (filled before ``on_train_end``)."""

    config: Config
    output_dir: Path
    backend: Backend
    total_steps: int
    is_main_process: bool = True
    num_processes: int = 1
    outputs: list[str] = field(default_factory=list)


@hookspec
def register_backends(register: Callable[[BackendPlugin], None]) -> None:
    """Register model backends: ``register(MyBackend())``, one instance of a
    :class:`lorakit.backend_plugin.BackendPlugin` subclass per backend."""


@hookspec
def register_model_loaders(register: Callable[[ModelLoaderSpec], None]) -> None:
    """Register readers of base models (a file layout, a folder, a hub id) for a backend."""


@hookspec
def register_dataset_readers(register: Callable[[DatasetReaderSpec], None]) -> None:
    """Register readers that turn a data folder or file into training records."""


@hookspec
def register_labelers(register: Callable[[LabelerSpec], None]) -> None:
    """Register labelers that caption or tag images for ``lorakit label``."""


@hookspec
def register_optimizers(register: Callable[[OptimizerSpec], None]) -> None:
    """Register optimizers selectable with the ``optimizer`` config key."""


@hookspec
def register_schedulers(register: Callable[[SchedulerSpec], None]) -> None:
    """Register learning-rate schedules selectable with the ``lr_scheduler`` config key."""


@hookspec
def register_exporters(register: Callable[[ExporterSpec], None]) -> None:
    """Register writers of trained LoRA files selectable with ``export_formats``."""


@hookspec
def register_trackers(register: Callable[[TrackerSpec], None]) -> None:
    """Register metric trackers selectable with the ``trackers`` config key."""


@hookspec
def register_rewards(register: Callable[[RewardSpec], None]) -> None:
    """Register reward functions that GRPO training selects with ``llm.rewards``."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``lorakit`` CLI: ``app`` is the root ``typer.Typer``."""


@hookspec
def on_train_start(run: RunInfo) -> None:
    """Called once the model, data and optimizer are ready, before the first step."""


@hookspec
def on_step_end(run: RunInfo, step: int, metrics: dict[str, float]) -> None:
    """Called after every optimizer step with the step's metrics (loss, lr, ...)."""


@hookspec
def on_checkpoint(run: RunInfo, step: int, path: str) -> None:
    """Called after a checkpoint has been written (atomically) to ``path``."""


@hookspec
def on_train_end(run: RunInfo, outputs: list[str]) -> None:
    """Called after the final export with the paths of the files it wrote."""
