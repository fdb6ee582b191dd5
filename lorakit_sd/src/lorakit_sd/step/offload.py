"""``sd.group_offload``: a transformer's frozen block weights kept in CPU memory and brought
to the GPU one block at a time, as diffusers' ``apply_group_offloading`` does at block level
(``offload_type="block_level"``, one block per group) — for the 20B+ models whose weights do
not fit the card.

diffusers' hooks serve inference: they move a whole block, LoRA parameters and their
gradients included, and park them again right after the block's forward, while its backward
still needs them. Training needs three things more, which this module adds with the same
block-level shape:

- only the **frozen** weights move; the LoRA parameters (and the optimizer's state) stay on
  the GPU, so gradients accumulate where their parameters live;
- each block runs under (non-reentrant) gradient checkpointing, which is switched on: the
  backward recomputes the block's forward, which brings its weights back, and autograd keeps
  what the recomputation saved until that block's backward is done; one block is on the
  device at a time (bringing one parks the one before);
- ``.to(device)`` (accelerate's ``prepare``, previews) moves the LoRA parameters and leaves
  the frozen weights parked, one block at a time, so the whole model is never on the GPU.

The frozen text encoders stream the same way (forward only) while the caption cache is
built and for previews, so a 24B encoder never has to fit the card either. The refusal on a
machine without CUDA is :func:`lorakit_sd.step.quantize.check`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def repeated_blocks(model: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks (its ``_no_split_modules`` classes, outermost only)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for _, module in model.named_modules():
        if id(module) in inside:
            continue
        if type(module).__name__ in names:
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


class BlockOffload:
    """One block's frozen weights: parked (``home``, pinned CPU memory on CUDA) between its
    forward passes, on ``device`` while it runs."""

    def __init__(
        self,
        block: torch.nn.Module,
        device: Any,
        park: Callable[[Any], Any],
        active: list[BlockOffload],
    ) -> None:
        self.device = torch.device(device)
        self.active = active  # the one block on the device, shared by a model's blocks
        self.frozen = [p for p in block.parameters() if not p.requires_grad]
        self.home = {p: _pinned(p.data.to("cpu")) for p in self.frozen}
        self.park_as = park
        self.park()
        block.register_forward_pre_hook(lambda *_: self.onload())
        block.register_forward_hook(lambda *_: self.park())
        self.apply = block._apply
        block._apply = self.guarded_apply  # type: ignore[method-assign]

    def onload(self) -> None:
        """Bring this block's weights to the device, parking the block that was there (the
        backward's recomputation may stop before a block's forward ends, so its forward
        hook does not always park it)."""
        if self.active and self.active[0] is not self:
            self.active[0].park()
        for p in self.frozen:
            p.data = self.home[p].to(self.device, non_blocking=True)
        self.active[:] = [self]

    def park(self) -> None:
        for p in self.frozen:
            p.data = self.park_as(self.home[p])
        if self in self.active:
            self.active.remove(self)

    def guarded_apply(self, fn: Any, recurse: bool = True) -> Any:
        """``_apply`` (``.to()``, ``.float()``...) for the trainable parameters; the frozen
        ones are parked again block by block."""
        out = self.apply(fn, recurse)
        self.park()
        return out


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


def offload_blocks(
    model: Any,
    device: Any,
    park: Callable[[Any], Any] | None = None,
    *,
    checkpointing: bool = True,
) -> list[BlockOffload]:
    """Offload ``model``'s repeated blocks' frozen weights to CPU memory (``park``: what a
    parked weight is, its CPU copy by default), onloaded to ``device`` block by block. With
    ``checkpointing`` (a trained model) its gradient checkpointing is switched on, so its
    backward recomputes each block; a model that only runs forward (a text encoder filling
    the caption cache) needs none."""
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated blocks to offload")
    if checkpointing:
        model.enable_gradient_checkpointing()
    active: list[BlockOffload] = []
    return [BlockOffload(b, device, park or (lambda home: home), active) for b in blocks]
