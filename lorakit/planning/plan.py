"""``lorakit plan``: the run's peak memory, whether it fits a card, and the ladder.

:func:`make_plan` asks the config's backend for a :class:`~lorakit.planning.estimate.PlanModel`
(``BackendPlugin.plan``), traces one step, and, when a card is given and the run does not
fit, walks the ladder: the changes that lower memory, cheapest loss of quality first, each
row re-planned (traced) and kept only when the plan's own numbers say it fits.

1. a smaller ``batch_size`` with more ``gradient_accumulation_steps`` (same effective batch);
2. ``gradient_checkpointing`` (slower, same result);
3. an 8-bit AdamW (``adamw8bit``; a little noise in the optimizer state);
4. a smaller resolution (``sd.resolution``) or ``llm.max_seq_len``;
5. a smaller ``lora_rank``;
6. QLoRA (``llm.load_in_4bit``, text models).

Rows 3 to 6 keep the changes of rows 1 and 2 that were needed; a row lists every key it
sets, as ``--set`` flags.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lorakit.errors import UsageError
from lorakit.planning.estimate import Estimate, PlanModel, Trace, combine, trace_step
from lorakit.planning.gpus import GIB, Card

#: Optimizers an 8-bit AdamW replaces without changing what the run means.
ADAM_NAMES = ("adamw", "adam")


def gib(n: float) -> str:
    """Bytes as GiB (MiB under 1 GiB)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB or n == 0 else f"{n / 2**20:.1f} MiB"


@dataclass
class Row:
    """A config of the ladder: the keys it changes, its estimate, what it costs."""

    changes: dict[str, Any]
    estimate: Estimate
    cost: str

    def flags(self) -> str:
        return " ".join(f"--set {k}={_yaml(v)}" for k, v in self.changes.items())


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Plan:
    """What ``lorakit plan`` prints."""

    backend: str
    model: PlanModel
    estimate: Estimate
    batch_size: int
    accumulation: int
    steps: int | None
    card: Card | None = None
    ladder: list[Row] = field(default_factory=list)
    optimizer: str = "adamw"

    @property
    def fits(self) -> bool | None:
        return None if self.card is None else self.estimate.total <= self.card.usable_bytes

    def as_dict(self) -> dict[str, Any]:
        """What ``lorakit plan --json`` prints (and ``lorakit ui`` shows beside the form)."""
        e = self.estimate
        return {
            "backend": self.backend,
            "model": self.model.description,
            "per_micro_batch": self.model.per_step,
            "caveat": self.model.caveat or None,
            "steps": self.steps,
            "bytes": {
                "frozen_weights": e.frozen,
                "lora": e.lora,
                "gradients": e.grads,
                "optimizer": e.optimizer,
                "activations": e.activations,
                "caches": e.caches,
                "total": e.total,
                "activations_other_checkpointing": e.other_activations,
            },
            "gradient_checkpointing": e.checkpointing,
            "card": None if self.card is None else {"name": self.card.name, "gib": self.card.gib},
            "fits": self.fits,
            "ladder": [
                {
                    "set": row.changes,
                    "flags": row.flags(),
                    "total": row.estimate.total,
                    "cost": row.cost,
                }
                for row in self.ladder
            ],
        }

    def summary(self) -> str:
        """One line: the peak, what holds it, and the verdict when a card is known."""
        e = self.estimate
        line = (
            f"plan: peak ≈ {gib(e.total)} (weights {gib(e.frozen)}, LoRA + grads + optimizer "
            f"{gib(e.lora + e.grads + e.optimizer)}, activations {gib(e.activations)}"
            f"{', caches ' + gib(e.caches) if e.caches else ''})"
        )
        if self.card is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            line += f" on {self.card}: {verdict}"
        if self.model.caveat:
            line += f" [{self.model.caveat}]"
        return line


class Planner:
    """Plans a config and its variants, tracing each distinct step once."""

    def __init__(self, config: Any, registries: Any = None) -> None:
        if registries is None:
            from lorakit.plugins import get_registries

            registries = get_registries()
        self.config = config
        backend = registries.backends.get(config.backend)
        if not backend.supports("plan"):
            raise UsageError(f"backend '{config.backend}' cannot plan (it has no plan method)")
        self.planner = backend.plan
        self._traces: dict[str, tuple[PlanModel, Trace]] = {}

    def variant(self, changes: dict[str, Any]) -> Any:
        """The config with ``changes`` (dotted keys for the backend section) applied."""
        config = self.config
        core = {k: v for k, v in changes.items() if "." not in k}
        prefix = f"{config.backend}."
        own = {k[len(prefix) :]: v for k, v in changes.items() if k.startswith(prefix)}
        train = config.train.model_copy(update=core)
        section = config.section.model_copy(update=own) if own else config.section
        sections = dict(config.sections)
        if section is not None:
            sections[config.backend] = section
        return dataclasses.replace(config, train=train, section=section, sections=sections)

    def _trace(self, changes: dict[str, Any], checkpointing: bool) -> tuple[PlanModel, Trace]:
        traced = {k: v for k, v in changes.items() if k != "optimizer"}
        key = repr(sorted({**traced, "gradient_checkpointing": checkpointing}.items()))
        if key not in self._traces:
            model = self.planner(self.variant(changes))
            self._traces[key] = (model, trace_step(model, checkpointing=checkpointing))
        return self._traces[key]

    def estimate(
        self, changes: dict[str, Any], *, both: bool = False
    ) -> tuple[PlanModel, Estimate]:
        config = self.variant(changes)
        checkpointing = config.train.gradient_checkpointing
        model, step = self._trace(changes, checkpointing)
        other = self._trace(changes, not checkpointing)[1] if both else None
        return model, combine(model, step, optimizer=config.train.optimizer, other=other)

    # -- the ladder ----------------------------------------------------------------------
    def _fitting_batch(self, fixed: dict[str, Any], card: Card) -> Row | None:
        """``fixed`` with the largest batch_size (≤ the config's) that fits, accumulation
        raised so the effective batch stays the same."""
        train = self.config.train
        batch, accumulation = train.batch_size, train.gradient_accumulation_steps
        sizes = sorted({max(batch >> i, 1) for i in range(batch.bit_length())}, reverse=True)
        for size in sizes:
            changes = dict(fixed)
            if size != batch:
                changes["batch_size"] = size
                changes["gradient_accumulation_steps"] = accumulation * math.ceil(batch / size)
            _, estimate = self.estimate(changes)
            if estimate.total <= card.usable_bytes:
                return Row(changes, estimate, "")
        return None

    def ladder(self, model: PlanModel, card: Card, *, limit: int = 6) -> list[Row]:
        train = self.config.train
        rows: list[Row] = []

        def add(row: Row | None, cost: str) -> None:
            if row is None or not row.changes:
                return
            if any(r.changes == row.changes for r in rows):
                return
            parts = []
            if "batch_size" in row.changes:
                parts.append("same effective batch, more accumulation steps")
            rows.append(
                dataclasses.replace(
                    row, cost=", ".join([cost, *parts]) if cost else ", ".join(parts)
                )
            )

        add(self._fitting_batch({}, card), "")
        fixed: dict[str, Any] = {}
        if not train.gradient_checkpointing:
            fixed["gradient_checkpointing"] = True
            add(self._fitting_batch(fixed, card), "slower steps (recomputed activations)")
        if train.optimizer.lower() in ADAM_NAMES:
            fixed["optimizer"] = "adamw8bit"
            add(self._fitting_batch(fixed, card), "8-bit optimizer state (bitsandbytes)")
        for changes, cost in model.rungs:
            fixed.update(changes)
            add(self._fitting_batch(fixed, card), cost)
        if model.resolution_key:
            for value in model.resolution_steps:
                row = self._fitting_batch({**fixed, model.resolution_key: value}, card)
                if row is not None:
                    add(row, f"smaller {model.resolution_key} ({model.resolution} → {value})")
                    break
        rank = train.lora_rank
        for smaller in (rank // 2, rank // 4):
            if smaller < 4:
                break
            row = self._fitting_batch({**fixed, "lora_rank": smaller}, card)
            if row is not None:
                add(row, f"smaller lora_rank ({rank} → {smaller})")
                break
        if model.qlora_key and not model.qlora:
            qlora = {**fixed, model.qlora_key: True}
            qlora.pop("optimizer", None)
            row = self._fitting_batch(qlora, card)
            add(row, "QLoRA: the base in 4-bit NF4 (needs a CUDA GPU and bitsandbytes)")
        return rows[:limit]


def count_steps(config: Any, items: int | None, processes: int = 1) -> int | None:
    """Optimizer steps of the run (max_steps, or epochs over ``items``)."""
    train = config.train
    if train.max_steps:
        return int(train.max_steps)
    if not items:
        return None
    per_step = train.batch_size * train.gradient_accumulation_steps * processes
    return math.ceil(items / per_step) * train.epochs


def make_plan(
    config: Any,
    card: Card | None = None,
    *,
    registries: Any = None,
    ladder: bool = True,
    both: bool = True,
) -> Plan:
    """Plan ``config`` (and, when it does not fit ``card``, its ladder).

    ``both``: also trace the step with gradient checkpointing switched the other way.
    """
    planner = Planner(config, registries)
    model, estimate = planner.estimate({}, both=both)
    train = config.train
    plan = Plan(
        backend=config.backend,
        model=model,
        estimate=estimate,
        batch_size=train.batch_size,
        accumulation=train.gradient_accumulation_steps,
        steps=count_steps(config, model.items),
        card=card,
        optimizer=train.optimizer,
    )
    if card is not None and ladder and not plan.fits:
        plan.ladder = planner.ladder(model, card)
    return plan


def plan_line(config: Any, gpu: str | None = None) -> str:
    """The plan's one line for ``config`` (on ``gpu``, else this machine's GPU, else no
    verdict), or ``plan: skipped (why)`` when no plan can be made: what ``lorakit train``
    prints and ``lorakit ui`` shows beside a valid form."""
    from lorakit.planning.gpus import local_card, parse_gpu

    try:
        card = parse_gpu(gpu) if gpu else local_card()
        return make_plan(config, card, both=False, ladder=False).summary()
    except Exception as exc:  # noqa: BLE001 - an estimate is advice, never a blocker
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"plan: skipped ({text})"
