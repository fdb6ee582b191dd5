"""What the run's header warns about for a text dataset: too few optimizer steps, too
long a warmup."""

from __future__ import annotations

from lorakit.api import Config


def schedule_warnings(config: Config, rows: int, processes: int = 1) -> list[str]:
    """What the run's header should warn about: too few optimizer steps, too long a warmup."""
    train = config.train
    per_epoch = -(-rows // max(train.batch_size * processes, 1))
    steps = train.max_steps or -(-train.epochs * per_epoch // train.gradient_accumulation_steps)
    lines = []
    if steps < 50:
        lines.append(
            f"this run makes only {steps} optimizer step{'s' if steps != 1 else ''} "
            f"({rows} examples, batch_size "
            f"{train.batch_size} × gradient_accumulation_steps "
            f"{train.gradient_accumulation_steps}, {train.epochs} epochs); LoRA usually wants "
            f"more: raise epochs or lower batch_size / gradient_accumulation_steps"
        )
    if train.lr_warmup_steps * 5 > steps:
        lines.append(
            f"lr_warmup_steps {train.lr_warmup_steps} covers more than a fifth of the "
            f"{steps} optimizer steps; lower it (e.g. {max(steps // 10, 1)})"
        )
    return lines
