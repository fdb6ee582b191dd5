"""An exponential moving average (EMA) of the trainable weights (the ``ema:`` config section).

After every optimizer step ``t`` (counted from 1) the engine calls :meth:`Ema.update`:

    t <= start_step                          ema_t = w_t            (it follows the weights)
    t > start_step, (t - start_step) % k == 0   ema_t = d * ema_{t-1} + (1 - d) * w_t
    otherwise                                ema_t = ema_{t-1}

with ``d = decay``, ``k = update_every`` and ``ema_0`` the weights the run starts from. The
average is kept in float32, on the accelerator's device or the CPU (``device``), saved in
every checkpoint (``ema.safetensors``) so a resumed run continues it exactly, and written by
the exporters in place of the raw weights (:meth:`Ema.swapped`), which are exported too,
under ``-raw`` names (:func:`export_both`).

It works on any backend: it averages what the backend trains (the engine's trainable
parameters), whole on every process (one process, DDP, DeepSpeed ZeRO-2).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lorakit.errors import UsageError

FILE = "ema.safetensors"


class Ema:
    """The averaged copy of a run's trainable tensors, by parameter name."""

    def __init__(self, config: Any, params: dict[str, torch.Tensor], device: Any) -> None:
        self.config = config
        self.device = torch.device(device)
        with torch.no_grad():
            self.shadow = {n: self._copy(p) for n, p in params.items()}

    @classmethod
    def create(cls, config: Any, strategy: Any) -> Ema | None:
        """The run's EMA (``config.train.ema``), or None when it is off."""
        cfg = config.train.ema
        if cfg is None:
            return None
        if strategy.kind == "fsdp" or (strategy.kind == "deepspeed" and strategy.stage == 3):
            name = config.train.distributed.strategy
            raise UsageError(
                f"ema: averages whole weights on every process; distributed.strategy {name} "
                f"shards them (use ddp or deepspeed_zero2)"
            )
        device = "cpu" if cfg.device == "cpu" else strategy.accelerator.device
        return cls(cfg, strategy.trainable(), device)

    def _copy(self, value: torch.Tensor) -> torch.Tensor:
        return value.detach().to(self.device, torch.float32, copy=True)

    @torch.no_grad()
    def update(self, step: int, params: dict[str, torch.Tensor]) -> None:
        """Fold in the weights after optimizer step ``step`` (see the module docstring)."""
        cfg = self.config
        if step <= cfg.start_step:
            for name, param in params.items():
                self.shadow[name].copy_(param.detach())
        elif (step - cfg.start_step) % cfg.update_every == 0:
            d = cfg.decay
            for name, param in params.items():
                weight = param.detach().to(self.device, torch.float32)
                self.shadow[name].mul_(d).add_(weight, alpha=1.0 - d)

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}
        save_file(tensors, str(Path(folder) / FILE), metadata={"ema": self.describe()})

    def load(self, folder: Path) -> None:
        from lorakit.engine.manifest import read_tensors
        from lorakit.runfolder import RunFolder

        path = Path(folder) / FILE
        if RunFolder(folder).lstat(FILE) is None:
            raise UsageError(f"checkpoint {folder} has no {FILE}: it was saved without ema")
        tensors = read_tensors(Path(folder), FILE)
        if set(tensors) != set(self.shadow):
            raise UsageError(f"{path} does not fit this model (its tensors differ)")
        with torch.no_grad():
            for name, value in tensors.items():
                self.shadow[name].copy_(value)

    def describe(self) -> str:
        cfg = self.config
        keys = {"decay": cfg.decay, "update_every": cfg.update_every, "start_step": cfg.start_step}
        return json.dumps(keys)

    # -- exports and previews ------------------------------------------------------------

    @contextlib.contextmanager
    def swapped(self, params: dict[str, torch.Tensor]) -> Iterator[None]:
        """While inside, the parameters hold the EMA values; the raw ones are put back after
        (exactly: the training continues from them)."""
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(raw[name])


def raw_name(path: Path, name: str) -> str:
    """Where a raw-weights export lands: ``<name>-raw...`` as the exporter named it (it was
    given ``<name>-raw``), or ``-raw`` added before the first dot of a name of its own
    (``adapter`` → ``adapter-raw``)."""
    if path.name.startswith(f"{name}-raw"):
        return path.name
    stem, dot, rest = path.name.partition(".")
    return f"{stem}-raw{dot}{rest}"


def export_both(
    ema: Ema,
    params: dict[str, torch.Tensor],
    folder: Path,
    name: str,
    metadata: dict[str, str],
    export: Callable[[Path, str, dict[str, str]], list[Path]],
) -> list[Path]:
    """``export(folder, name, metadata)`` with the EMA weights, then with the raw weights
    under ``-raw`` names (written in a scratch folder first, so neither replaces the other).
    """
    with ema.swapped(params):
        paths = export(
            folder, name, {**metadata, "lorakit.weights": "ema", "lorakit.ema": ema.describe()}
        )
    scratch = Path(tempfile.mkdtemp(prefix=".raw-export.", dir=folder))
    try:
        for path in export(scratch, f"{name}-raw", {**metadata, "lorakit.weights": "raw"}):
            target = Path(folder) / raw_name(Path(path), name)
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
            paths.append(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return paths
