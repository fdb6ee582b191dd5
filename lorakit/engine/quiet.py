"""Silence library messages that say nothing to a lorakit user.

DeepSpeed, when installed, is imported by accelerate / transformers / peft during a run and
logs ``Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
detect it.`` on every machine without a GPU, in the middle of lorakit's output. The filter
drops that one message from DeepSpeed's logger (named ``DeepSpeed``) and nothing else; it is
installed before DeepSpeed is imported (the logger object is the same one DeepSpeed later
configures, and a filter survives its ``setLevel`` / handler set-up).
"""

from __future__ import annotations

import logging

_QUIET = ("Setting accelerator to CPU",)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(m) for m in _QUIET)


def quiet_deepspeed() -> None:
    """Install the filter on DeepSpeed's logger once (idempotent)."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropMessages) for f in logger.filters):
        logger.addFilter(_DropMessages())
