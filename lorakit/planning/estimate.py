"""Peak accelerator memory of one training step, without weights and without a GPU.

A backend's planner (``BackendPlugin.plan``) describes the run as a :class:`PlanModel`:
the model built on the meta device with LoRA injected, a fake batch, and the loss. The
estimator moves the model onto fake tensors (torch's ``FakeTensorMode``: shapes, dtypes
and storages, no data), runs one forward and backward pass of the real model code under
torch's memory tracker (``torch.distributed._tools.mem_tracker.MemTracker``) and reads the
peak it saw: weights, gradients, activations and temporaries, for any architecture the
backend can build. What the step does not allocate is added from what it is: the optimizer
state (per optimizer, per trainable parameter), tensors kept on the device beside the
trained model (``caches``), and QLoRA's 4-bit storage of the frozen linear weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Optimizer state in bytes per trainable parameter (fp32 LoRA parameters).
OPTIMIZER_STATE = {
    "adamw": 8.0,  # exp_avg, exp_avg_sq
    "adam": 8.0,
    "adamw8bit": 2.0,  # two 8-bit moments (+ a float per 2048-value block, counted below)
    "dadapt_adam": 12.0,  # exp_avg, exp_avg_sq, s
    "prodigy": 16.0,  # exp_avg, exp_avg_sq, s, p0
    "sgd": 0.0,
    "lion": 4.0,
}
#: Adam-like state for an optimizer the table does not know.
DEFAULT_OPTIMIZER_STATE = 8.0
#: QLoRA: bytes per 4-bit NF4 weight, with double-quantised block constants.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass
class PlanModel:
    """What a backend's planner returns for a config (see docs/will-it-fit.md).

    ``build(checkpointing)`` returns the trained module on the meta device, LoRA injected
    (trainable parameters ``requires_grad``), in the dtypes training uses, with gradient
    checkpointing on or off as asked. ``batch()`` is called under ``FakeTensorMode`` and
    returns one micro-batch of fake tensors on the CPU; ``loss(module, batch)`` returns the
    scalar the engine calls ``backward`` on. ``caches`` are other tensors the run keeps on
    the device (frozen text encoders, cached embeddings), by name, in bytes.
    ``quantized_params`` counts frozen weights stored in 4-bit (QLoRA; ``quantized_bytes``
    per weight, default NF4's; fp8: 1), which the trace holds at 2 bytes. ``per_step`` describes one micro-batch ("4 images of
    512×512", "2,048 tokens"); ``items`` is the dataset's size (images × repeats, rows),
    or None when it cannot be read. ``resolution_key`` / ``resolution`` name the key that
    sets the sample size (``sd.resolution``, ``llm.max_seq_len``) and its value, and
    ``resolution_steps`` the smaller values the ladder may try. ``qlora_key`` (text
    models) is the key that loads the base in 4-bit. ``caveat`` says why the plan is only
    an upper bound (``worst case: every row 2,048 tokens, the data could not be read``): the
    plan's line says so, and ``lorakit train`` never refuses a run on such a plan.
    """

    build: Callable[[bool], Any]
    batch: Callable[[], Any]
    loss: Callable[[Any, Any], Any]
    description: str
    per_step: str
    autocast_dtype: Any = None
    caches: dict[str, int] = field(default_factory=dict)
    quantized_params: int = 0
    items: int | None = None
    resolution_key: str | None = None
    resolution: int | None = None
    resolution_steps: tuple[int, ...] = ()
    qlora_key: str | None = None
    qlora: bool = False
    caveat: str = ""
    quantized_bytes: float = NF4_BYTES
    #: backend ladder rows, ``(changes, cost)``, tried in order after the optimizer's row,
    #: each keeping the changes before it (FLUX.1: bf16, fp8 / NF4 base weights)
    rungs: tuple[tuple[dict[str, Any], str], ...] = ()


@dataclass
class Trace:
    """What one traced step held at its peak, in bytes."""

    frozen: int
    trainable_params: int
    trainable: int
    buffers: int
    grads: int
    activations: int
    peak: int
    checkpointing: bool = False


@dataclass
class Estimate:
    """Peak memory of a run, by what holds it, in bytes."""

    frozen: int
    lora: int
    grads: int
    optimizer: int
    activations: int
    caches: int
    trainable_params: int
    checkpointing: bool
    #: Activations with gradient checkpointing switched the other way.
    other_activations: int | None = None

    @property
    def total(self) -> int:
        return (
            self.frozen + self.lora + self.grads + self.optimizer + self.activations + self.caches
        )


def optimizer_bytes(name: str, params: int) -> int:
    per = OPTIMIZER_STATE.get(name.lower(), DEFAULT_OPTIMIZER_STATE)
    extra = 4 * params / 2048 * 2 if name.lower() == "adamw8bit" else 0
    return int(per * params + extra)


def _tie(module: Any) -> None:
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()


def memory_tracker() -> Any:
    """torch's MemTracker, made to accept frozen parameters and to scale to 7B models.

    torch 2.13's tracker installs a gradient hook on every parameter of a module it meets,
    which raises for a parameter that does not require grad (every frozen base weight of a
    LoRA run); a frozen parameter gets a no-op handle instead, so it is still counted as a
    parameter and simply never has a gradient. After every operation the tracker also
    updates the peak of every module it has seen, which makes a 32-layer model's step take
    minutes; only the global peak is kept here (the per-module peaks are not used).
    """
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY as _TOTAL
    from torch.distributed._tools.mem_tracker import MemTracker

    class _NoHook:
        def remove(self) -> None:
            return None

    class FrozenAwareTracker(MemTracker):
        def _track_module_params_and_buffers(
            self, module: Any, install_grad_hooks: bool = True
        ) -> tuple[int, int]:
            handles = self._param_to_grad_hook_handles
            for param in module.parameters():
                if not param.requires_grad and handles.get(param, None) is None:
                    handles[param] = (_NoHook(), _NoHook())
            result: tuple[int, int] = super()._track_module_params_and_buffers(
                module, install_grad_hooks
            )
            return result

        def _update_peak_stats(self, peak_state: Any) -> None:
            for device, snap in self._curr_mem_snap.items():
                total = snap[_TOTAL]
                if self._peak_mem.get(device, 0) < total:
                    self._peak_mem[device] = total
                    self._peak_mem_snap[device] = dict(snap)

    return FrozenAwareTracker()


def peak_of(tracker: Any) -> tuple[int, int, int]:
    """(peak total, parameters + buffers at the peak, gradients at the peak), all devices."""
    snapshot = tracker.get_tracker_snapshot("peak")
    peak = sum(int(stats.get("Total", 0)) for stats in snapshot.values())
    held = sum(_category(s, "Parameter") + _category(s, "Buffer") for s in snapshot.values())
    grads = sum(_category(s, "Gradient") for s in snapshot.values())
    return peak, held, grads


def trace_step(model: PlanModel, *, checkpointing: bool) -> Trace:
    """Run one forward + backward of ``model`` on fake tensors and read the peak."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = model.build(checkpointing)
    params = {id(p): p for p in module.parameters()}.values()
    trainable_params = sum(p.numel() for p in params if p.requires_grad)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    # Meta parameters become fake CPU tensors (to_empty meets real meta tensors: allowed).
    with FakeTensorMode(allow_non_fake_inputs=True):
        module.to_empty(device="cpu")
        _tie(module)
        autocast = (
            torch.autocast("cpu", dtype=model.autocast_dtype)
            if model.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        tracker = memory_tracker()
        tracker.track_external(module)
        with tracker:
            batch = model.batch()  # the batch is on the device too
            with autocast:
                loss = model.loss(module, batch)
            loss.backward()
        peak, held, grads = peak_of(tracker)
    return Trace(
        frozen=frozen,
        trainable_params=trainable_params,
        trainable=trainable,
        buffers=buffers,
        grads=grads,
        activations=max(peak - held - grads, 0),
        peak=peak,
        checkpointing=checkpointing,
    )


def _category(stats: dict[Any, Any], name: str) -> int:
    for key, value in stats.items():
        if str(getattr(key, "value", key)).lower() == name.lower():
            return int(value)
    return 0


def combine(
    model: PlanModel, step: Trace, *, optimizer: str, other: Trace | None = None
) -> Estimate:
    """An :class:`Estimate` from a traced step and what the trace does not allocate."""
    frozen = step.frozen + step.buffers
    if model.quantized_params:
        frozen -= int(model.quantized_params * (2 - model.quantized_bytes))
    return Estimate(
        frozen=frozen,
        lora=step.trainable,
        grads=step.grads,
        optimizer=optimizer_bytes(optimizer, step.trainable_params),
        activations=step.activations,
        caches=sum(model.caches.values()),
        trainable_params=step.trainable_params,
        checkpointing=step.checkpointing,
        other_activations=other.activations if other is not None else None,
    )
