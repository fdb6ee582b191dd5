"""The training engine. Importing this module imports torch and accelerate."""

from lorakit.engine.quiet import quiet_deepspeed

quiet_deepspeed()  # before anything imports deepspeed

from lorakit.engine.trainer import RunResult, train  # noqa: E402

__all__ = ["RunResult", "train"]
