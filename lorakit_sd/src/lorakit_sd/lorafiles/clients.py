"""Which LoRA clients load which adapted modules, and the warning when they differ.

Most clients apply a kohya-format entry to whatever module its key names. Some apply only
part of a family's modules and drop the rest without a word, so the same file gives a
different image there: each family states those clients (``ModelFamily.partial_clients``,
its own facts), and a run that adapts a module one of them drops says so once per client.
"""

from __future__ import annotations

import re
from typing import Any

from peft.tuners.lora import LoraLayer

from lorakit_sd.families.base import PartialClient


def dropped_by(client: PartialClient, paths: list[str]) -> list[str]:
    """The denoiser module paths ``client`` does not apply."""
    applies = re.compile(client.applies)
    return [p for p in paths if not applies.match(p)]


def adapted_paths(module: Any) -> list[str]:
    """Paths of the modules a peft LoRA was injected into."""
    return [name for name, sub in module.named_modules() if isinstance(sub, LoraLayer)]


def client_warnings(family: Any, paths: list[str]) -> list[tuple[str, list[str]]]:
    """``(warning, dropped paths)`` for each of ``family``'s partial clients that drops some
    of the adapted ``paths``."""
    found = []
    for client in family.partial_clients:
        dropped = dropped_by(client, paths)
        if not dropped:
            continue
        more = f" (+{len(dropped) - 4} more)" if len(dropped) > 4 else ""
        found.append(
            (
                f"warning: LoRA on {', '.join(dropped[:4])}{more} loads in {client.loads_all}, "
                f"but {client.name} ignores it (it adapts only {client.applies_what}): the "
                "same file gives a different image there; see docs/formats.md",
                dropped,
            )
        )
    return found


def warn_unsupported(denoiser: Any, family: Any, log: Any) -> list[str]:
    """Log the warnings of :func:`client_warnings` for a denoiser with LoRA injected; the
    adapted module paths some client drops."""
    dropped: list[str] = []
    for warning, paths in client_warnings(family, adapted_paths(denoiser)):
        log(warning)
        dropped += [p for p in paths if p not in dropped]
    return dropped
