"""Out of memory, in one place: what counts as one, and the one answer a run gives.

Backends let an out-of-memory error propagate; the step (:func:`lorakit.engine.step.train_step`)
recognises it with :func:`is_oom` and either shrinks the micro-batch (``auto_batch_size``,
:class:`ShrinkBatch`) or fails the run with :func:`message`; the CLI answers one raised
elsewhere (loading, caching, previews) with the same ladder. Nothing here imports torch:
an exception can only be torch's if torch is already imported.
"""

from __future__ import annotations

import sys

OOM_LADDER = (
    "lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
    "then enable gradient_checkpointing, then lower the resolution (sd) or max_seq_len (llm), "
    "then lower lora_rank; `lorakit plan --config FILE --gpu <card>` prints the configs "
    "that fit (docs/will-it-fit.md)"
)

#: How torch's CPU allocator reports a failed allocation: a RuntimeError, not
#: ``torch.OutOfMemoryError`` (``[enforce fail at alloc_cpu.cpp:...] ... DefaultCPUAllocator:
#: can't allocate memory: you tried to allocate N bytes``).
CPU_ALLOCATOR_TEXT = "DefaultCPUAllocator: can't allocate memory"


class ShrinkBatch(Exception):  # noqa: N818 - a signal to the loop, not an error
    """The step ran out of memory and ``auto_batch_size`` can halve the micro-batch."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator running out of memory: ``torch.OutOfMemoryError``
    (CUDA and the other accelerators) or the CPU allocator's RuntimeError."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and CPU_ALLOCATOR_TEXT in str(exc)


def message(step: int | None = None, batch_size: int | None = None) -> str:
    """The run's one out-of-memory line: where, the micro-batch, the ladder."""
    where = f" at step {step}" if step is not None else ""
    batch = f" (batch_size {batch_size})" if batch_size is not None else ""
    return f"out of memory{where}{batch}: {OOM_LADDER}"
