"""Set-up and resume: everything a run holds before its first step, in one ``Session``.

``set_up`` resolves the config against the registries, builds the accelerator, the backend,
the data, the optimizer and the LR schedule, and hands them to accelerate; ``resume``
restores a checkpoint into them. Both leave nothing on disk when they fail.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

import lorakit.engine.autobatch as autobatch
from lorakit import __version__
from lorakit.backend import Backend, TrainContext
from lorakit.config import Config
from lorakit.engine.checkpoint import checkpoint_dirs, find_checkpoint, load_checkpoint
from lorakit.engine.distributed import Strategy
from lorakit.engine.ema import Ema
from lorakit.engine.manifest import read_state
from lorakit.engine.runlock import earlier_run
from lorakit.engine.sampler import EpochOrdered, EpochSampler
from lorakit.engine.speed import apply_tf32, compile_module
from lorakit.engine.state import TrainerState
from lorakit.errors import ConfigError, RunError, UsageError
from lorakit.hookspecs import RunInfo
from lorakit.plugins import Plugins
from lorakit.registry import ExporterSpec, Tracker, TrackerSpec
from lorakit.runfolder import CACHE, CONFIG, RunFolder

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Session:
    """One run's live objects, from set-up to export."""

    config: Config
    plugins: Plugins
    out: Path
    accelerator: Accelerator
    strategy: Strategy
    backend: Backend
    ctx: TrainContext
    dataset: Sized
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    loader: DataLoader[Any]
    sampler: EpochOrdered
    exporters: list[ExporterSpec]
    adaptive: bool
    tracker_specs: list[TrackerSpec]
    total: int
    state: TrainerState
    checkpoint: Path | None = None
    ema: Ema | None = None  # with ema: in the config
    metadata: dict[str, str] = field(default_factory=dict)
    trackers: list[Tracker] = field(default_factory=list)
    run: RunInfo | None = None
    #: The logged metrics of this run (from a resumed run's metrics.jsonl, when it has one),
    #: which loss.png plots whichever trackers are on.
    history: list[dict[str, float]] = field(default_factory=list)
    tf32: bool = False  # TF32 matmuls on (allow_tf32; said in the header)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def accum(self) -> int:
        return self.config.train.gradient_accumulation_steps

    @property
    def per_epoch(self) -> int:
        return len(self.loader)

    @property
    def effective_batch(self) -> int:
        return self.config.train.batch_size * self.accum * self.accelerator.num_processes


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
        **accelerator_kwargs(config),
    )


def data_loader(backend: Backend, dataset: Any, config: Config) -> tuple[Any, Any]:
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
            dataset,
            batch_sampler=sampler,
            collate_fn=backend.collate,
            num_workers=cfg.num_workers,
            generator=generator,
        )
        return loader, sampler
    sampler = EpochSampler(len(dataset), cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=backend.collate,
        num_workers=cfg.num_workers,
        generator=generator,
        drop_last=False,
    )
    return loader, sampler


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
    state = read_state(checkpoint)
    run = RunFolder(Path(checkpoint).parent.parent)
    if state.config_hash == config.semantic_hash():
        return
    changed = "training settings"
    if run.is_file(CONFIG):
        import yaml

        try:
            saved = yaml.safe_load(run.read_text(CONFIG))
        except yaml.YAMLError:
            saved = None
        if isinstance(saved, dict):
            old = config.semantic_view(saved)
            new = config.semantic_view()
            keys = sorted(_changed_keys(old, new))
            if keys:
                changed = ", ".join(keys)
    raise UsageError(
        f"cannot resume from {checkpoint}: the config changed what the run learns ({changed}); "
        f"start a new run or restore those keys"
    )


def _optimizer(backend: Backend, params: list[Any], opt_spec: Any, config: Config) -> Any:
    cfg = config.train
    if opt_spec.adaptive and not 0.1 <= cfg.learning_rate <= 10:
        warnings.warn(
            f"{cfg.optimizer} adapts its own step size and expects learning_rate≈1.0; "
            f"got {cfg.learning_rate}",
            stacklevel=1,
        )
    groups = backend.optimizer_param_groups(cfg.learning_rate)
    if groups is not None:
        grouped = [p for g in groups for p in g["params"]]
        if len(grouped) != len(params) or {id(p) for p in grouped} != {id(p) for p in params}:
            raise RunError(
                f"backend {config.backend}: parameter groups must hold every LoRA tensor once"
            )
    try:
        return opt_spec.factory(groups or params, lr=cfg.learning_rate, **cfg.optimizer_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{cfg.optimizer}: {exc}", key="optimizer_args", file=config.path
        ) from None


def _scheduler(sched_spec: Any, optimizer: Any, total: int, config: Config) -> Any:
    """The LR schedule, on the plain torch optimizer (before accelerate wraps it).

    lorakit steps it once per optimizer step itself, for every strategy: accelerate's
    prepared scheduler steps ``num_processes`` times per step, and DeepSpeed's optimizer is
    not a torch optimizer a schedule can be built on.
    """
    cfg = config.train
    try:
        return sched_spec.factory(
            optimizer,
            warmup_steps=cfg.lr_warmup_steps,
            total_steps=total,
            **cfg.lr_scheduler_args,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{cfg.lr_scheduler}: {exc}", key="lr_scheduler_args", file=config.path
        ) from None


def _lr_remaps(checkpoint: Path | None, total: int) -> list[list[int]]:
    """The length changes a resumed run's schedule has seen, this one included."""
    if checkpoint is None:
        return []
    saved = read_state(checkpoint)
    remaps = [list(r) for r in saved.lr_remaps]
    before = saved.total_steps or total
    if before != total and saved.step < total:
        remaps.append([saved.step, before, total])
    return remaps


def continue_schedule(scheduler: Any, remaps: list[list[int]]) -> None:
    """Keep the LR continuous when a resume changes the run's length (epochs, max_steps).

    The rule: the schedule is built for the original length; when a resume at step ``k``
    changes the length from ``old`` to ``new``, the rest of it (steps ``k..old``) is
    stretched or squeezed over the steps ``k..new``. The LR already reached stays, the
    schedule still ends where it would have (0 for linear and cosine), and warmup done
    stays done. Rebuilding the schedule for the new length would instead jump (linear
    decay at half-way: 0.5 → 0.75 after doubling the length).
    """
    if not remaps or not hasattr(scheduler, "lr_lambdas"):
        return

    def remap(step: float) -> float:
        for k, old, new in reversed(remaps):
            if step > k:
                step = k + (step - k) * (old - k) / (new - k)
        return step

    scheduler.lr_lambdas = [(lambda step, f=f: f(remap(step))) for f in scheduler.lr_lambdas]


def total_steps(config: Config, per_epoch: int) -> int:
    cfg = config.train
    return cfg.max_steps or math.ceil(cfg.epochs * per_epoch / cfg.gradient_accumulation_steps)


def set_up(config: Config, resume: str | bool | None, plugins: Plugins) -> Session:
    """Build everything the run needs, resumed from a checkpoint when asked."""
    registries = plugins.registries
    cfg = config.train
    # "auto" becomes what this machine runs, so config.yaml and exported metadata say it.
    cfg.mixed_precision = resolve_precision(cfg.mixed_precision)  # type: ignore[assignment]
    out = Path(cfg.output_dir)
    created = not out.exists()
    checkpoint = _checkpoint_to_resume(config, out, resume)

    accelerator = build_accelerator(config)
    try:
        autobatch.check(config, accelerator.num_processes)
        opt_spec = registries.optimizers.get(cfg.optimizer)
        sched_spec = registries.schedulers.get(cfg.lr_scheduler)
        tracker_specs = [registries.trackers.get(n) for n in cfg.trackers]
        backend_spec = registries.backends.get(config.backend)
        set_seed(cfg.seed)
        backend: Backend = backend_spec.create(config)
        exporters = _exporters(config, backend, registries)
        ctx = TrainContext(
            config=config,
            accelerator=accelerator,
            output_dir=out,
            cache_dir=out / CACHE,
            registries=registries,
            weight_dtype=DTYPES[accelerator.mixed_precision],
            log=accelerator.print,
        )
        backend.validate(ctx)
        backend.setup(ctx)
        dataset = backend.dataset(ctx)
        if len(dataset) == 0:
            raise UsageError(f"the dataset in {cfg.train_data_dir} is empty")
        module = backend.trainable_module()
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise RunError(f"backend {config.backend} left no trainable parameters")
        optimizer = _optimizer(backend, params, opt_spec, config)
        loader, sampler = data_loader(backend, dataset, config)
        # The schedule's length needs the per-process batch count: shard the loader first.
        loader = accelerator.prepare(loader)
        if len(loader) == 0:
            raise UsageError("the dataset yields no batches (fewer samples than processes?)")
        total = total_steps(config, len(loader))
        remaps = _lr_remaps(checkpoint, total)
        scheduler = _scheduler(sched_spec, optimizer, remaps[0][1] if remaps else total, config)
        continue_schedule(scheduler, remaps)
        module, optimizer = accelerator.prepare(module, optimizer)
        if cfg.torch_compile:
            compile_module(module, cfg.torch_compile_backend)
        backend.set_train_module(module)
        # The model was built alike on every process; from here each draws its own noise,
        # timesteps and dropout (seed + process index), which checkpoints keep per process.
        set_seed(cfg.seed, device_specific=True)
        strategy = Strategy.of(accelerator, module, cfg.distributed.strategy)
        state = TrainerState(
            config_hash=config.semantic_hash(),
            lorakit_version=__version__,
            num_processes=accelerator.num_processes,
            total_steps=total,
            batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            started_at=time.time(),
        )
        session = Session(
            config=config,
            plugins=plugins,
            out=out,
            accelerator=accelerator,
            strategy=strategy,
            backend=backend,
            ctx=ctx,
            dataset=dataset,
            module=module,
            params=params,
            optimizer=optimizer,
            scheduler=scheduler,
            loader=loader,
            sampler=sampler,
            exporters=exporters,
            adaptive=opt_spec.adaptive,
            tracker_specs=tracker_specs,
            total=total,
            state=state,
            checkpoint=checkpoint,
            ema=Ema.create(config, strategy),
            tf32=apply_tf32(cfg.allow_tf32, accelerator.device),
        )
        if checkpoint is not None:
            resume_from(session, checkpoint)
            session.state.total_steps, session.state.lr_remaps = total, remaps
            session.state.batch_size = cfg.batch_size
            session.state.gradient_accumulation_steps = cfg.gradient_accumulation_steps
            session.state.started_at = session.state.started_at or state.started_at
        backend.started_at = session.state.started_at  # the first start, also after a resume
    except BaseException:
        if created and accelerator.is_main_process:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return session


def _checkpoint_to_resume(config: Config, out: Path, resume: str | bool | None) -> Path | None:
    """The checkpoint ``--resume`` names (its config checked, its batch layout restored);
    without ``--resume``, an ``output_dir`` holding checkpoints is refused."""
    if not resume:
        if checkpoint_dirs(out):
            raise earlier_run(out)
        return None
    checkpoint = find_checkpoint(out, resume)
    if checkpoint is not None:
        check_resume_config(config, checkpoint)
        autobatch.restore_layout(config, checkpoint)
    return checkpoint


def _exporters(config: Config, backend: Backend, registries: Any) -> list[Any]:
    """The exporters of ``export_formats`` (default: the backend's), each serving the backend."""
    formats = list(config.train.export_formats or backend.default_export_formats)
    exporters = [registries.exporters.get(f) for f in formats]
    for exporter in exporters:
        if exporter.backends and config.backend not in exporter.backends:
            raise UsageError(
                f"export_formats: '{exporter.name}' writes {', '.join(exporter.backends)} "
                f"LoRAs, not {config.backend}"
            )
    return exporters


def resume_from(s: Session, checkpoint: Path) -> None:
    """Restore the LoRA, optimizer, schedule, RNG and data position of ``checkpoint``."""
    s.state = load_checkpoint(checkpoint, s.strategy, s.optimizer, s.scheduler)
    if s.ema is not None:
        s.ema.load(checkpoint)
    if s.state.num_processes != s.accelerator.num_processes:
        raise UsageError(
            f"cannot resume a {s.state.num_processes}-process run with "
            f"{s.accelerator.num_processes} processes"
        )
    s.accelerator.print(f"resuming from {checkpoint} at step {s.state.step}")
    if s.state.total_steps and s.state.total_steps != s.total:
        s.accelerator.print(
            f"the run's length changed from {s.state.total_steps} to {s.total} steps: the "
            f"learning rate continues from where it was, the rest of the schedule is stretched"
        )
