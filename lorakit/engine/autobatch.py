"""``auto_batch_size: true``: an out-of-memory error in the first steps halves the
micro-batch and doubles gradient accumulation, then retries the step.

The effective batch, the samples of every optimizer step (the window of ``batch ×
accumulation`` consecutive samples stays the same) and the LR schedule are unchanged; only
the memory a forward pass needs is halved. The layout in use is kept in run.json and in
every checkpoint, so ``--resume`` continues with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.errors import UsageError
from lorakit.runfolder import RECORD, RunFolder

FIRST_STEPS = 3  # an OOM later than this is not a batch-size problem to guess at


def check(config: Any, num_processes: int) -> None:
    if not config.train.auto_batch_size:
        return
    if num_processes > 1 or config.train.distributed.strategy != "ddp":
        raise UsageError(
            "auto_batch_size works on one process only (an out-of-memory error on one rank "
            "would leave the others waiting): set batch_size yourself for multi-process runs"
        )


def restore_layout(config: Any, checkpoint: Path) -> None:
    """Continue with the micro-batch layout a resumed run had switched to."""
    from lorakit.engine.manifest import read_state

    saved = read_state(checkpoint)
    batch, accum = saved.batch_size, saved.gradient_accumulation_steps
    cfg = config.train
    if not (cfg.auto_batch_size and batch and accum):
        return
    if batch * accum == cfg.batch_size * cfg.gradient_accumulation_steps:
        cfg.batch_size, cfg.gradient_accumulation_steps = batch, accum


def can_shrink(s: Any) -> bool:
    cfg = s.config.train
    return bool(cfg.auto_batch_size) and s.state.step < FIRST_STEPS and cfg.batch_size % 2 == 0


def halve(s: Any) -> None:
    """Halve the micro-batch and double accumulation, in the config and the run's state,
    and record the change; the caller rebuilds the data loader at the same place."""
    cfg = s.config.train
    s.optimizer.zero_grad(set_to_none=True)
    old = cfg.batch_size
    cfg.batch_size, cfg.gradient_accumulation_steps = old // 2, cfg.gradient_accumulation_steps * 2
    s.state.batch_size, s.state.gradient_accumulation_steps = (
        cfg.batch_size,
        cfg.gradient_accumulation_steps,
    )
    s.state.micro_batches *= 2  # each consumed micro-batch is two now
    change = {
        "step": s.state.step + 1,
        "batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
    }
    s.accelerator.print(
        f"out of memory at batch {old}: continuing with batch {cfg.batch_size} × accumulation "
        f"{cfg.gradient_accumulation_steps} (same effective batch {s.effective_batch})"
    )
    if s.main:
        run = RunFolder(s.out)
        record = run.read_json(RECORD)
        record.setdefault("auto_batch_size", []).append(change)
        run.write_json(RECORD, record)
