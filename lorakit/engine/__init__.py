"""The training engine. Importing this module imports torch and accelerate."""

from lorakit.engine.trainer import RunResult, train

__all__ = ["RunResult", "train"]
