"""The training loop: backend-agnostic, on accelerate.

Read top to bottom: resolve the run, build the backend, the data and the optimizer, maybe
resume, then loop over optimizer steps. Each step draws ``gradient_accumulation_steps``
micro-batches from an endless stream over the epochs, normalises the loss by the whole
window's item count (across processes), clips, steps, logs, and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from lorakit import __version__
from lorakit.backend import Backend, RunInfo, TrainContext, trainable_state_dict
from lorakit.builtins.optimizers import effective_lr
from lorakit.builtins.trackers import read_metrics
from lorakit.config import Config
from lorakit.diagnostics.troubleshooting import OOM_LADDER
from lorakit.engine.checkpoint import (
    checkpoint_dirs,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lorakit.engine.lossplot import write_loss_plot
from lorakit.engine.progress import TrainProgress
from lorakit.engine.sampler import EpochSampler
from lorakit.engine.state import TrainerState
from lorakit.errors import ConfigError, RunError, UsageError
from lorakit.io import write_text
from lorakit.plugins import Plugins, get_plugins
from lorakit.provenance import file_metadata, now, run_record

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunResult:
    output_dir: Path
    steps: int
    final_loss: float | None
    outputs: list[Path] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0


def resolve_precision(value: str) -> str:
    if value != "auto":
        if value != "no" and not torch.cuda.is_available() and value == "fp16":
            raise UsageError("mixed_precision fp16 needs a CUDA GPU; use 'no' (or bf16) on CPU")
        return value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_accelerator(config: Config) -> Accelerator:
    from lorakit.engine.distributed import accelerator_kwargs

    return Accelerator(
        mixed_precision=resolve_precision(config.train.mixed_precision),
        cpu=not torch.cuda.is_available(),
        **accelerator_kwargs(config),
    )


class _Interrupt:
    """SIGINT/SIGTERM → finish the current step, checkpoint, stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _stream(
    loader: Any, sampler: EpochSampler, accelerator: Accelerator, start: int
) -> Iterator[Any]:
    """Micro-batches across epochs, starting after ``start`` consumed ones."""
    per_epoch = len(loader)
    epoch, skip = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        it = accelerator.skip_first_batches(loader, skip) if skip else loader
        yield from it
        epoch, skip = epoch + 1, 0


def _data_loader(backend: Backend, dataset: Any, config: Config) -> tuple[Any, Any]:
    """The DataLoader and its sampler: the backend's batch sampler (buckets, length groups)
    or a plain shuffle, both pure functions of (seed, epoch) so a resume finds its place.

    The loader gets its own generator: creating an iterator then draws nothing from the
    global RNG, whose state the checkpoint restores.
    """
    cfg = config.train
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = backend.batch_sampler(dataset, cfg.batch_size, cfg.seed)
    if sampler is not None:
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=backend.collate,
            num_workers=cfg.num_workers, generator=generator,
        )  # fmt: skip
        return loader, sampler
    sampler = EpochSampler(len(dataset), cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=backend.collate,
        num_workers=cfg.num_workers, generator=generator, drop_last=False,
    )  # fmt: skip
    return loader, sampler


def _export(
    exporters: list[Any],
    backend: Backend,
    folder: Path,
    config: Config,
    metadata: dict[str, str],
    step: int,
) -> list[Path]:
    """Run every exporter into ``folder``; the files they wrote."""
    stamped = {**metadata, "lorakit.step": str(step)}
    return [p for e in exporters for p in e.factory(backend, folder, config.train.name, stamped)]


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def check_resume_config(config: Config, checkpoint: Path) -> None:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved_path = Path(checkpoint).parent.parent / "config.yaml"
    if state.get("config_hash") == config.semantic_hash():
        return
    changed = "training settings"
    if saved_path.exists():
        import yaml

        old = config.semantic_view(yaml.safe_load(saved_path.read_text()))
        new = config.semantic_view()
        keys = sorted(_changed_keys(old, new))
        if keys:
            changed = ", ".join(keys)
    raise UsageError(
        f"cannot resume from {checkpoint}: the config changed what the run learns ({changed}); "
        f"start a new run or restore those keys"
    )


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
    registries = plugins.registries
    train_cfg = config.train
    # "auto" becomes what this machine runs, so config.yaml and exported metadata say it.
    train_cfg.mixed_precision = resolve_precision(train_cfg.mixed_precision)  # type: ignore[assignment]
    out = Path(train_cfg.output_dir)
    created = not out.exists()
    if not resume and checkpoint_dirs(out):
        raise UsageError(
            f"output_dir {out} holds checkpoints of an earlier run: continue it with --resume, "
            f"or choose a new output_dir (or delete {out / 'checkpoints'})"
        )
    checkpoint = find_checkpoint(out, resume) if resume else None
    if checkpoint is not None:
        check_resume_config(config, checkpoint)

    accelerator = build_accelerator(config)
    main = accelerator.is_main_process
    try:
        opt_spec = registries.optimizers.get(train_cfg.optimizer)
        sched_spec = registries.schedulers.get(train_cfg.lr_scheduler)
        tracker_specs = [registries.trackers.get(n) for n in train_cfg.trackers]
        backend_spec = registries.backends.get(config.backend)
        formats = train_cfg.export_formats
        set_seed(train_cfg.seed)
        backend: Backend = backend_spec.factory(config)
        formats = list(formats or backend.default_export_formats)
        exporters = [registries.exporters.get(f) for f in formats]
        for exporter in exporters:
            if exporter.backends and config.backend not in exporter.backends:
                raise UsageError(
                    f"export_formats: '{exporter.name}' writes {', '.join(exporter.backends)} "
                    f"LoRAs, not {config.backend}"
                )
        ctx = TrainContext(
            config=config,
            accelerator=accelerator,
            output_dir=out,
            cache_dir=out / "cache",
            registries=registries,
            weight_dtype=DTYPES[accelerator.mixed_precision],
            log=accelerator.print,
        )
        backend.validate(ctx)
        backend.setup(ctx)
        dataset = backend.dataset(ctx)
        if len(dataset) == 0:
            raise UsageError(f"the dataset in {train_cfg.train_data_dir} is empty")
        module = backend.trainable_module()
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise RunError(f"backend {config.backend} left no trainable parameters")
        if opt_spec.adaptive and not 0.1 <= train_cfg.learning_rate <= 10:
            warnings.warn(
                f"{train_cfg.optimizer} adapts its own step size and expects learning_rate≈1.0; "
                f"got {train_cfg.learning_rate}",
                stacklevel=1,
            )
        groups = backend.optimizer_param_groups(train_cfg.learning_rate)
        if groups is not None:
            grouped = [p for g in groups for p in g["params"]]
            if len(grouped) != len(params) or {id(p) for p in grouped} != {id(p) for p in params}:
                raise RunError(
                    f"backend {config.backend}: parameter groups must hold every LoRA tensor once"
                )
        try:
            optimizer = opt_spec.factory(
                groups or params, lr=train_cfg.learning_rate, **train_cfg.optimizer_args
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{train_cfg.optimizer}: {exc}", key="optimizer_args", file=config.path
            ) from None

        loader, sampler = _data_loader(backend, dataset, config)
        module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
        backend.set_train_module(module)
        accum = train_cfg.gradient_accumulation_steps
        per_epoch = len(loader)
        if per_epoch == 0:
            raise UsageError("the dataset yields no batches (fewer samples than processes?)")
        total = train_cfg.max_steps or math.ceil(train_cfg.epochs * per_epoch / accum)
        try:
            scheduler = sched_spec.factory(
                optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                warmup_steps=train_cfg.lr_warmup_steps,
                total_steps=total,
                **train_cfg.lr_scheduler_args,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{train_cfg.lr_scheduler}: {exc}", key="lr_scheduler_args", file=config.path
            ) from None

        state = TrainerState(
            config_hash=config.semantic_hash(),
            lorakit_version=__version__,
            num_processes=accelerator.num_processes,
        )
        if checkpoint is not None:
            state = load_checkpoint(
                checkpoint, accelerator.unwrap_model(module), optimizer, scheduler
            )
            if state.num_processes != accelerator.num_processes:
                raise UsageError(
                    f"cannot resume a {state.num_processes}-process run with "
                    f"{accelerator.num_processes} processes"
                )
            accelerator.print(f"resuming from {checkpoint} at step {state.step}")

    except BaseException:
        if created and main:
            shutil.rmtree(out, ignore_errors=True)
        raise

    metadata = file_metadata(config, plugins=plugins)
    metadata.update(backend.export_metadata())
    started = now()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", config.to_yaml())
        record = run_record(
            config, plugins=plugins, status="running", started_at=started,
            num_processes=accelerator.num_processes, dataset_fingerprint=backend.dataset_fingerprint(),
            effective_batch=train_cfg.batch_size * accum * accelerator.num_processes,
            mixed_precision=accelerator.mixed_precision, total_steps=total,
            resumed_from=str(checkpoint) if checkpoint else None,
        )  # fmt: skip
        write_text(out / "run.json", json.dumps(record, indent=2))
    trackers = [s.factory(out, config, state.step) for s in tracker_specs] if main else []
    run = RunInfo(config, out, backend, total, main, accelerator.num_processes)
    plugins.call("on_train_start", run=run)

    def checkpoint_now() -> Path | None:
        path = None
        if main:
            path = save_checkpoint(
                out, state, trainable_state_dict(accelerator.unwrap_model(module)), optimizer,
                scheduler, keep=train_cfg.save_total_limit,
                extra=lambda folder: _export(exporters, backend, folder, config, metadata, state.step),
            )  # fmt: skip
            if (out / "metrics.jsonl").exists():
                write_loss_plot(read_metrics(out), out / "loss.png", config.train.name)
        accelerator.wait_for_everyone()
        if path is not None:
            plugins.call("on_checkpoint", run=run, step=state.step, path=str(path))
        return path

    accelerator.print(
        f"training {config.backend} LoRA: {total} steps, {len(dataset)} samples, effective batch "
        f"{train_cfg.batch_size * accum * accelerator.num_processes} (batch {train_cfg.batch_size} "
        f"× accumulation {accum} × {accelerator.num_processes} processes), "
        f"precision {accelerator.mixed_precision}, {len(params)} LoRA tensors → {out}"
    )
    bar = TrainProgress(total, state.step, enabled=progress and main)
    stream = _stream(loader, sampler, accelerator, state.micro_batches)
    last_loss: float | None = None
    t_start = time.perf_counter() - state.elapsed_s
    interrupted = False
    module.train()
    try:
        with _Interrupt() as interrupt:
            while state.step < total:
                t0 = time.perf_counter()
                window = [next(stream) for _ in range(accum)]
                state.micro_batches += accum
                try:
                    losses = _forward_backward(backend, module, accelerator, window)
                except torch.OutOfMemoryError:
                    raise RunError(
                        f"out of memory at step {state.step + 1}: {OOM_LADDER}"
                    ) from None
                grad_norm, lr = _optimizer_step(
                    accelerator,
                    optimizer,
                    scheduler,
                    params,
                    train_cfg.max_grad_norm,
                    opt_spec.adaptive,
                )
                state.step += 1
                state.elapsed_s = time.perf_counter() - t_start
                last_loss = losses["loss"]
                dt = time.perf_counter() - t0
                metrics = {
                    "loss": last_loss,
                    "lr": lr,
                    "epoch": state.micro_batches / per_epoch,
                    f"{backend.throughput_unit}_per_s": losses[backend.throughput_unit]
                    / max(dt, 1e-9),
                    "elapsed_s": round(state.elapsed_s, 3),
                }
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                if not math.isfinite(last_loss):
                    raise RunError(
                        f"loss is {last_loss} at step {state.step}: lower learning_rate, "
                        f"check the data, or use mixed_precision bf16 instead of fp16"
                    )
                extra = backend.step_metrics(state.step, total)
                metrics.update(extra)
                if main and (
                    state.step % train_cfg.logging_steps == 0 or state.step == total or extra
                ):
                    for tracker in trackers:
                        tracker.log(metrics, state.step)
                bar.update(state.step, metrics)
                plugins.call("on_step_end", run=run, step=state.step, metrics=metrics)
                every = train_cfg.sample_every_n_steps
                if every and state.step % every == 0 and state.step < total and main:
                    backend.sample(ctx, state.step, out / "samples")
                if _any_rank(accelerator, interrupt.signal is not None) and state.step < total:
                    interrupted = True
                    break
                if (
                    train_cfg.save_steps
                    and state.step % train_cfg.save_steps == 0
                    and state.step < total
                ):
                    checkpoint_now()
    except BaseException as exc:
        if main:
            _update_record(out, status="failed", finished_at=now(), steps=state.step,
                           error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        raise
    finally:
        bar.close()
        for tracker in trackers:
            tracker.close()

    outputs: list[Path] = []
    if interrupted:
        path = checkpoint_now()
        accelerator.print(f"interrupted: checkpoint saved at {path}; continue with --resume")
    else:
        checkpoint_now()
        if main:
            outputs += _export(exporters, backend, out, config, metadata, state.step)
            if train_cfg.sample_prompts:
                outputs += backend.sample(ctx, state.step, out / "samples")
        accelerator.wait_for_everyone()
    if main:
        _update_record(
            out, status="interrupted" if interrupted else "finished", finished_at=now(),
            steps=state.step, final_loss=last_loss, outputs=[str(p) for p in outputs],
        )  # fmt: skip
    run.outputs = [str(p) for p in outputs]
    if not interrupted:
        plugins.call("on_train_end", run=run, outputs=run.outputs)
    backend.teardown()
    accelerator.end_training()
    return RunResult(out, state.step, last_loss, outputs, interrupted, state.elapsed_s)


def _update_record(out: Path, **fields: Any) -> None:
    """Update run.json (status, end time, outputs ...)."""
    record = json.loads((out / "run.json").read_text())
    record.update(fields)
    write_text(out / "run.json", json.dumps(record, indent=2))


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` is set on any process (a signal may reach only one rank)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum") > 0)


def _optimizer_step(
    accelerator: Accelerator,
    optimizer: Any,
    scheduler: Any,
    params: list[Any],
    max_norm: float | None,
    adaptive: bool,
) -> tuple[float | None, float]:
    """Clip, step, advance the schedule; the gradient norm and the step size used."""
    grad_norm = None
    if max_norm is not None:
        norm = accelerator.clip_grad_norm_(params, max_norm)  # None under DeepSpeed (it clips)
        grad_norm = float(norm) if norm is not None else None
    optimizer.step()
    lr = effective_lr(optimizer) if adaptive else float(optimizer.param_groups[0]["lr"])
    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the step was skipped
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def _forward_backward(
    backend: Backend, module: Any, accelerator: Accelerator, window: list[Any]
) -> dict[str, float]:
    """Forward and backward every micro-batch; the loss is a mean over the window's items.

    Each micro-batch's summed loss is divided by the window's total item count across all
    processes (times the process count, since DDP averages gradients), so the update is the
    same however the items fall into micro-batches and processes.
    """
    local = torch.tensor(float(sum(backend.count(b) for b in window)), device=accelerator.device)
    total_count = float(accelerator.reduce(local, reduction="sum"))
    scale = accelerator.num_processes / max(total_count, 1.0)
    loss_sum = torch.zeros((), device=accelerator.device)
    samples = tokens = 0
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        sync = (
            contextlib.nullcontext()
            if last or accelerator.num_processes == 1
            else accelerator.no_sync(module)
        )
        with sync:
            with accelerator.autocast():
                out = backend.loss(module, batch)
            accelerator.backward(out.loss_sum * scale)
        loss_sum += out.loss_sum.detach().float()
        samples += out.samples
        tokens += out.tokens
    # One reduction for the loss and the throughput counts of every process.
    local_stats = torch.stack(
        [loss_sum, loss_sum.new_tensor(float(samples)), loss_sum.new_tensor(float(tokens))]
    )
    total_loss, all_samples, all_tokens = accelerator.reduce(local_stats, reduction="sum").tolist()
    return {
        "loss": total_loss / max(total_count, 1.0),
        "samples": all_samples,
        "tokens": all_tokens,
    }
