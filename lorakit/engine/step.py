"""One optimizer step: draw the accumulation window, forward and backward each micro-batch,
clip, step, advance the schedule. Pure functions of the session, so each can be tested."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator

import lorakit.engine.autobatch as autobatch
from lorakit.backend import Backend
from lorakit.builtins.optimizers import effective_lr
from lorakit.engine.oom import ShrinkBatch, is_oom, message
from lorakit.engine.sampler import EpochOrdered
from lorakit.errors import RunError


def batches(
    loader: Any, sampler: EpochOrdered, accelerator: Accelerator, start: int
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


def train_step(s: Any, stream: Iterator[Any]) -> dict[str, float]:
    """Advance the session ``s`` by one optimizer step; the step's metrics."""
    t0 = time.perf_counter()
    window = [next(stream) for _ in range(s.accum)]
    s.state.micro_batches += s.accum
    try:
        losses = forward_backward(s.backend, s.module, s.accelerator, window)
    except Exception as exc:
        if not is_oom(exc):
            raise
        s.state.micro_batches -= s.accum  # the window is drawn again (auto_batch_size)
        if autobatch.can_shrink(s):
            raise ShrinkBatch from None
        raise RunError(message(s.state.step + 1, s.config.train.batch_size)) from None
    grad_norm, lr = optimizer_step(s)
    s.state.step += 1
    loss = losses["loss"]
    if not math.isfinite(loss):
        raise RunError(
            f"loss is {loss} at step {s.state.step}: lower learning_rate, "
            f"check the data, or use mixed_precision bf16 instead of fp16"
        )
    unit = s.backend.throughput_unit
    metrics = {
        "loss": loss,
        "lr": lr,
        "epoch": s.state.micro_batches / s.per_epoch,
        f"{unit}_per_s": losses[unit] / max(time.perf_counter() - t0, 1e-9),
    }
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    return metrics


def optimizer_step(s: Any) -> tuple[float | None, float]:
    """Clip, step, advance the schedule; the gradient norm and the step size used.

    The norm is over all the model's parameters (frozen ones have no gradient), so FSDP2
    and DeepSpeed reduce it across shards. Under DeepSpeed the engine has already clipped
    (``gradient_clipping``) and stepped in the window's last backward; ``clip_grad_norm_``
    then only reports the norm, and ``optimizer.step()`` does nothing.
    """
    accelerator, optimizer = s.accelerator, s.optimizer
    grad_norm = None
    max_norm = s.config.train.max_grad_norm
    if max_norm is not None:
        norm = accelerator.clip_grad_norm_(s.strategy.clip_parameters(), max_norm)
        grad_norm = float(norm) if norm is not None else None
    optimizer.step()
    lr = effective_lr(optimizer) if s.adaptive else float(optimizer.param_groups[0]["lr"])
    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the step was skipped
        s.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def forward_backward(
    backend: Backend, module: Any, accelerator: Accelerator, window: list[Any]
) -> dict[str, float]:
    """Forward and backward every micro-batch; the loss is a mean over the window's items.

    Each micro-batch's summed loss is divided by the window's total item count across all
    processes (times the process count, since DDP averages gradients), so the update is the
    same however the items fall into micro-batches and processes. Gradients are synchronised
    on the window's last micro-batch only (DDP ``no_sync``; DeepSpeed's accumulation
    boundary, with its own 1/accumulation scaling undone).
    """
    local = torch.tensor(float(sum(backend.count(b) for b in window)), device=accelerator.device)
    total_count = float(accelerator.reduce(local, reduction="sum"))
    scale = accelerator.num_processes / max(total_count, 1.0)
    deepspeed = accelerator.state.deepspeed_plugin is not None
    if deepspeed:  # DeepSpeed divides each micro-batch's loss by the accumulation steps
        scale *= len(window)
    loss_sum = torch.zeros((), device=accelerator.device)
    samples = tokens = 0
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        if deepspeed:
            # Private accelerate API, on purpose: accelerator.backward tells DeepSpeed whether
            # this micro-batch ends an accumulation window from gradient_state.sync_gradients,
            # which only accumulate() sets publicly, counting windows of the Accelerator's
            # fixed gradient_accumulation_steps. Our windows vary (auto_batch_size, a short
            # last window), so the flag is set per micro-batch here. tests/test_engine.py
            # (test_accelerate_keeps_the_sync_flag_setter) fails when accelerate drops it.
            accelerator.gradient_state._set_sync_gradients(last)
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
