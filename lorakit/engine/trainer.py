"""The training loop: backend-agnostic, on accelerate. Read ``train`` top to bottom:

set_up      build the accelerator, backend, data, optimizer and schedule (session.py)
resume      restore a checkpoint into them (session.py, checkpoint.py)
begin       write config.yaml and run.json, open the trackers, print the header
train_step  one optimizer step over ``gradient_accumulation_steps`` micro-batches (step.py)
checkpoint  every ``save_steps``, and when a signal asks the run to stop
finish      the last checkpoint, the exports, samples and the final run.json
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import lorakit.engine.autobatch as autobatch
from lorakit.builtins.trackers import read_metrics
from lorakit.config import Config
from lorakit.engine.checkpoint import save_checkpoint
from lorakit.engine.ema import export_both
from lorakit.engine.lossplot import write_loss_plot
from lorakit.engine.oom import ShrinkBatch
from lorakit.engine.progress import TrainProgress
from lorakit.engine.session import Session, data_loader, set_up
from lorakit.engine.speed import tf32_header
from lorakit.engine.step import batches, train_step
from lorakit.hookspecs import RunInfo
from lorakit.plugins import Plugins, get_plugins
from lorakit.provenance import file_metadata, iso_time, now, run_record
from lorakit.runfolder import CONFIG, LOSS_PLOT, METRICS, RECORD, SAMPLES, RunFolder


@dataclass
class RunResult:
    output_dir: Path
    steps: int
    final_loss: float | None
    outputs: list[Path] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0
    signal: int | None = None  # what stopped an interrupted run (on any process)
    eval_loss: float | None = None  # the last eval loss, when the backend evaluates


def train(
    config: Config,
    *,
    resume: str | bool | None = None,
    plugins: Plugins | None = None,
    progress: bool = True,
) -> RunResult:
    """Run one training job as the config says; return where its outputs are."""
    plugins = plugins or get_plugins()
    plugins.check()
    s = set_up(config, resume, plugins)
    if s.main and s.state.step and RunFolder(s.out).is_file(METRICS):  # a resumed run
        s.history = [r for r in read_metrics(s.out) if r.get("step", 0) <= s.state.step]
    begin(s)
    bar = TrainProgress(s.total, s.state.step, enabled=progress and s.main)
    stream = batches(s.loader, s.sampler, s.accelerator, s.state.micro_batches)
    last_loss: float | None = None
    last_eval: float | None = None
    interrupted = False
    stop = 0
    every_save, every_sample = config.train.save_steps, config.train.sample_every_n_steps
    t_start = time.perf_counter() - s.state.elapsed_s
    s.module.train()
    # Signals are caught until the run has returned: a repeated SIGTERM arriving during the
    # final checkpoint must not kill one rank while the other waits for it.
    with _Interrupt() as interrupt:
        try:
            while s.state.step < s.total:
                try:
                    metrics = train_step(s, stream)
                except ShrinkBatch:  # out of memory, and auto_batch_size can act
                    autobatch.halve(s)
                    loader, s.sampler = data_loader(s.backend, s.dataset, s.config)
                    s.loader = s.accelerator.prepare(loader)
                    stream = batches(s.loader, s.sampler, s.accelerator, s.state.micro_batches)
                    continue
                if s.ema is not None:
                    s.ema.update(s.state.step, s.strategy.trainable())
                s.state.elapsed_s = time.perf_counter() - t_start
                metrics["elapsed_s"] = round(s.state.elapsed_s, 3)
                last_loss = metrics["loss"]
                log(s, metrics)
                last_eval = metrics.get("eval_loss", last_eval)
                bar.update(s.state.step, metrics)
                step, more = s.state.step, s.state.step < s.total
                if every_sample and step % every_sample == 0 and more:
                    _sample(s, step)
                stop = _stop_signal(s.accelerator, interrupt.signal)
                if stop and more:
                    interrupted = True
                    break
                if every_save and step % every_save == 0 and more:
                    checkpoint(s)
        except BaseException as exc:
            if s.main:
                _update_record(
                    s.out,
                    status="failed",
                    finished_at=now(),
                    steps=s.state.step,
                    error=f"{type(exc).__name__}: {exc}",
                )
            raise
        finally:
            bar.close()
            for tracker in s.trackers:
                tracker.close()
        result = finish(s, interrupted, last_loss, stop)
        result.eval_loss = last_eval
        return result


def begin(s: Session) -> None:
    """Record the run (config.yaml, run.json), open the trackers, print the header."""
    cfg = s.config.train
    s.metadata = file_metadata(s.config, plugins=s.plugins)
    s.metadata.update(s.backend.export_metadata())
    if s.main:
        run = RunFolder(s.out)
        run.write_text(CONFIG, s.config.to_yaml())
        record = run_record(
            s.config,
            plugins=s.plugins,
            status="running",
            started_at=iso_time(s.state.started_at),
            num_processes=s.accelerator.num_processes,
            dataset_fingerprint=s.backend.dataset_fingerprint(),
            effective_batch=s.effective_batch,
            mixed_precision=s.accelerator.mixed_precision,
            total_steps=s.total,
            strategy=cfg.distributed.strategy,
            resumed_from=str(s.checkpoint) if s.checkpoint else None,
        )
        run.write_json(RECORD, record)
    s.trackers = (
        [t.factory(s.out, s.config, s.state.step) for t in s.tracker_specs] if s.main else []
    )
    s.run = RunInfo(s.config, s.out, s.backend, s.total, s.main, s.accelerator.num_processes)
    s.plugins.call("on_train_start", run=s.run)
    if s.config.chosen_by:
        s.accelerator.print(s.config.chosen_by)
    n = s.accelerator.num_processes
    strategy = f", {cfg.distributed.strategy}" if n > 1 else ""
    s.accelerator.print(
        f"training {s.config.backend} LoRA: {s.total} steps, {len(s.dataset)} samples, effective "
        f"batch {s.effective_batch} (batch {cfg.batch_size} × accumulation {s.accum} × {n} "
        f"processes{strategy}), precision {s.accelerator.mixed_precision}{tf32_header(s.tf32)}, "
        f"{len(s.params)} LoRA tensors → {s.out}"
    )
    for line in s.plugins.overrides():
        s.accelerator.print(f"plugin override: {line}")


def log(s: Session, metrics: dict[str, float]) -> None:
    """Trackers every ``logging_steps``, at the end and on a step the backend adds metrics
    to (an eval loss), then the step hook."""
    step = s.state.step
    extra = s.backend.step_metrics(step, s.total)
    metrics.update(extra)
    if s.main and (step % s.config.train.logging_steps == 0 or step == s.total or extra):
        for tracker in s.trackers:
            tracker.log(metrics, step)
        s.history.append({"step": step, **metrics})
    s.plugins.call("on_step_end", run=s.run, step=step, metrics=metrics)


def checkpoint(s: Session) -> Path:
    """Save a resumable checkpoint (every process takes part) with the exports inside."""
    path = save_checkpoint(
        s.out,
        s.state,
        s.strategy,
        s.optimizer,
        s.scheduler,
        keep=s.config.train.save_total_limit,
        extra=lambda folder: _checkpoint_extras(s, folder),
    )
    if s.main and s.history:
        write_loss_plot(s.history, s.out / LOSS_PLOT, s.config.train.name)
    s.accelerator.wait_for_everyone()
    s.plugins.call("on_checkpoint", run=s.run, step=s.state.step, path=str(path))
    return path


def finish(s: Session, interrupted: bool, last_loss: float | None, stop: int = 0) -> RunResult:
    """Last checkpoint; when the run completed, the exports and samples too."""
    outputs: list[Path] = []
    path = checkpoint(s)
    if interrupted:
        s.accelerator.print(f"interrupted: checkpoint saved at {path}; continue with --resume")
    else:
        with s.strategy.gathered():
            if s.main:
                outputs += _export(s, s.out)
        if s.config.train.sample_prompts:
            outputs += _sample(s, s.state.step)
        s.accelerator.wait_for_everyone()
    if s.main:
        _update_record(
            s.out,
            status="interrupted" if interrupted else "finished",
            finished_at=now(),
            steps=s.state.step,
            final_loss=last_loss,
            outputs=[str(p) for p in outputs],
            signal=signal.Signals(stop).name if interrupted else None,
        )
    assert s.run is not None
    s.run.outputs = [str(p) for p in outputs]
    if not interrupted:
        with s.strategy.gathered():
            s.plugins.call("on_train_end", run=s.run, outputs=s.run.outputs)
    s.backend.teardown()
    s.strategy.close()  # before end_training destroys the process group
    s.accelerator.end_training()
    return RunResult(
        s.out,
        s.state.step,
        last_loss,
        outputs,
        interrupted,
        s.state.elapsed_s,
        stop if interrupted else None,
    )


def _sample(s: Session, step: int) -> list[Path]:
    """Previews, written by the main process.

    Under ZeRO-3 the base is partitioned too and only DeepSpeed's forward hooks gather it,
    layer by layer, when every process runs the same forward: each process renders the
    same previews (transformers' generate keeps them in step) and the others' copies go
    to a folder that is deleted.
    """
    if s.strategy.kind == "deepspeed" and s.strategy.stage == 3:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lorakit-preview-") as scratch:
            where = s.out / SAMPLES if s.main else Path(scratch)
            paths = s.backend.sample(s.ctx, step, where)
        return paths if s.main else []
    with s.strategy.gathered():
        if not s.main:
            return []
        ema = s.ema if s.ema is not None and s.ema.config.previews else None
        with ema.swapped(s.strategy.trainable()) if ema else contextlib.nullcontext():
            return s.backend.sample(s.ctx, step, s.out / SAMPLES)


def _export(s: Session, folder: Path) -> list[Path]:
    """Run every exporter into ``folder``; the files they wrote (inside ``gathered()``).
    With ``ema:``, the averaged weights under the run's name and the raw ones as ``-raw``."""
    stamped = {**s.metadata, "lorakit.step": str(s.state.step)}

    def export(where: Path, name: str, metadata: dict[str, str]) -> list[Path]:
        # The view is built here, after EMA has swapped the weights it exports into place.
        view = s.backend.adapter_export(s.state.step)
        return [p for e in s.exporters for p in e.factory(view, where, name, metadata)]

    if s.ema is None:
        return export(folder, s.config.train.name, stamped)
    trainable = s.strategy.trainable()
    return export_both(s.ema, trainable, folder, s.config.train.name, stamped, export)


def _checkpoint_extras(s: Session, folder: Path) -> list[Path]:
    """What a checkpoint holds besides the engine's state: the exports, then the EMA (after
    them, so an export named ``ema.safetensors`` cannot replace it)."""
    paths = _export(s, folder)
    if s.ema is not None:
        s.ema.save(folder)
    return paths


class _Interrupt:
    """SIGINT/SIGTERM → finish the current step, checkpoint, stop.

    The same signal often arrives more than once (a launcher forwards it, ``pkill`` or
    ``scancel`` reaches every process, a job scheduler repeats it): repeats are not "stop
    now". Only a second Ctrl-C a person presses (a SIGINT a second or more after the first)
    stops at once, without a checkpoint.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal, self._first = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first >= 1.0:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _update_record(out: Path, **fields: Any) -> None:
    """Update run.json (status, end time, outputs ...)."""
    RunFolder(out).update_json(RECORD, **fields)


def _stop_signal(accelerator: Any, signum: int | None) -> int:
    """The signal any process received (a signal may reach only one rank), or 0."""
    if accelerator.num_processes == 1:
        return signum or 0
    value = torch.tensor([float(signum or 0)], device=accelerator.device)
    return int(accelerator.gather(value).max().item())
