"""Helpers shared by lorakit-sd's tests (imported as ``sd_helpers``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Capture:
    """A test plugin that keeps the trained backend's modules after the run ends."""

    def __init__(self) -> None:
        self.backend: Any = None
        self.unet: Any = None
        self.text_encoders: list[Any] = []

    def on_train_end(self, run: Any, outputs: list[str]) -> None:
        self.backend = run.backend
        self.unet = run.backend.unet
        self.text_encoders = list(run.backend.text_encoders)


def train_tiny(
    tmp_path: Path,
    model: Any,
    data: Path,
    *,
    single_file: bool = False,
    capture: bool = False,
    **overrides: Any,
) -> tuple[Any, Capture | None]:
    """Train ``model`` on ``data`` through the real engine; returns (RunResult, capture)."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    import lorakit
    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import build_plugins, set_plugins

    extra: list[tuple[str, Any]] = [("sd", lorakit_sd.plugin)]
    cap = None
    if capture:
        cap = Capture()
        cap.on_train_end = lorakit.hookimpl(cap.on_train_end)  # type: ignore[method-assign]
        extra.append(("capture", cap))
    plugins = build_plugins(entry_points=False, extra=extra)
    set_plugins(plugins)
    try:
        output = overrides.pop("output_dir", tmp_path / "run")
        data_cfg = tiny_config(model, data, output, single_file=single_file, **overrides)
        config = load_config(data=data_cfg, registries=plugins.registries)
        result = train(config, plugins=plugins, progress=False)
    finally:
        set_plugins(None)
    return result, cap


def first_losses(output_dir: Path) -> list[float]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]
