"""Options several commands share (``--config``, ``--set``, ``--backend``,
``--allow-unsafe-pickle``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorakit.unsafe_pickle import allow_unsafe_pickle

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The run's YAML config.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set lora_rank=16 --set sd.resolution=768."),
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="Backend to use (overrides task_type).")
]
BaseConfigOption = Annotated[
    str | None,
    typer.Option(
        "--base-config",
        help="Config folder of a single-file base (diffusers layout); --set sd.base_config.",
    ),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsafe-pickle",
        help="Allow loading a pickled .ckpt/.pt base model: it runs the code inside the file "
        "(only for files you trust). Also LORAKIT_ALLOW_UNSAFE_PICKLE=1.",
        callback=allow_unsafe_pickle,
    ),
]
