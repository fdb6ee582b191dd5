"""Which LoRA clients load which adapted modules, and the warning when they differ.

diffusers, ComfyUI and A1111 apply a kohya-format entry to whatever module its key names.
kohya sd-scripts' own network (``networks/lora.py``, used by its scripts and by tools built
on it) only wraps modules inside the UNet's transformer, resnet and down/upsampler blocks: a
LoRA on ``conv_in``, ``conv_out``, ``time_embedding`` or SDXL's ``add_embedding`` is loaded
without a word and dropped, so the same file gives a different image there.
"""

from __future__ import annotations

import re
from typing import Any

#: Module paths inside the blocks kohya sd-scripts' network adapts.
_KOHYA_BLOCKS = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(attentions|resnets|downsamplers|upsamplers)\."
)


def outside_kohya_blocks(paths: list[str]) -> list[str]:
    """The UNet module paths kohya sd-scripts' network does not adapt."""
    return [p for p in paths if not _KOHYA_BLOCKS.match(p)]


def adapted_paths(module: Any) -> list[str]:
    """Paths of the modules a peft LoRA was injected into."""
    from peft.tuners.lora import LoraLayer

    return [name for name, sub in module.named_modules() if isinstance(sub, LoraLayer)]


def warn_unsupported(unet: Any, log: Any) -> list[str]:
    """Log (and return) the adapted UNet modules sd-scripts would silently drop."""
    outside = outside_kohya_blocks(adapted_paths(unet))
    if outside:
        shown = ", ".join(outside[:4]) + (
            f" (+{len(outside) - 4} more)" if len(outside) > 4 else ""
        )
        log(
            f"warning: LoRA on {shown} loads in diffusers, ComfyUI and A1111, but kohya "
            "sd-scripts' network ignores it (it adapts only transformer, resnet and sampler "
            "blocks): the same file gives a different image there; see docs/formats.md"
        )
    return outside
