"""The resumable position of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainerState:
    """The position of a run: enough, with the RNG states, to continue it exactly."""

    step: int = 0
    micro_batches: int = 0  # micro-batches consumed (per process), across epochs
    elapsed_s: float = 0.0
    config_hash: str = ""
    lorakit_version: str = ""
    num_processes: int = 1
    total_steps: int = 0  # the run's length when this was saved
    batch_size: int = 0  # the micro-batch layout in use (auto_batch_size may shrink it)
    gradient_accumulation_steps: int = 0
    # [step, old total, new total] for each resume that changed the length (see schedule)
    lr_remaps: list[list[int]] = field(default_factory=list)
    started_at: float = 0.0  # Unix time the run first started; a resume keeps it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
