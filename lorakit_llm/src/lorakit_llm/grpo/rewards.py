"""The run's rewards: named in ``llm.rewards``, found in the reward registry, weighted.

A reward is built (its factory called) only when a run names it. :meth:`Rewards.score`
calls each on a batch of completions and checks what comes back: a reward that raises, or
returns a list of the wrong length or a value that is not a finite number, stops the run
with one line naming the reward and the data row (exit code 2). This module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorakit.api import UsageError

RewardFn = Callable[[list[str], list[str], list[dict[str, Any]]], list[float]]


@dataclass
class Rewards:
    """The rewards of a run, in ``llm.rewards`` order, with their weights."""

    names: list[str]
    functions: list[RewardFn]
    weights: list[float]

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        rows: list[dict[str, Any]],
        sources: list[str],
    ) -> list[list[float]]:
        """Per reward, one value per completion (``rows[i]`` is completion ``i``'s row, read
        from ``sources[i]``, a ``file:line``)."""
        out = []
        for name, function in zip(self.names, self.functions, strict=True):
            try:
                values = function(prompts, completions, rows)
            except Exception as exc:
                where, exc = _failing_row(function, prompts, completions, rows, sources, exc)
                first = (str(exc).splitlines() or [""])[0]
                raise UsageError(
                    f"reward '{name}' failed on row {where}: {type(exc).__name__}: {first}"
                ) from None
            values = list(values) if isinstance(values, (list, tuple)) else values
            if not isinstance(values, list) or len(values) != len(completions):
                got = len(values) if isinstance(values, list) else type(values).__name__
                raise UsageError(
                    f"reward '{name}' returned {got} values for {len(completions)} completions "
                    f"(row {sources[0]})"
                )
            for value, source in zip(values, sources, strict=True):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not (math.isfinite(value))
                ):
                    raise UsageError(
                        f"reward '{name}' returned {value!r}, not a finite number, on row {source}"
                    )
            out.append([float(v) for v in values])
        return out

    def total(self, per_reward: list[list[float]]) -> list[float]:
        """The weighted sum over the rewards, per completion."""
        return [
            sum(w * values[i] for w, values in zip(self.weights, per_reward, strict=True))
            for i in range(len(per_reward[0]))
        ]


def _failing_row(
    function: RewardFn,
    prompts: list[str],
    completions: list[str],
    rows: list[dict[str, Any]],
    sources: list[str],
    exc: Exception,
) -> tuple[str, Exception]:
    """The first row the reward fails on alone (and its error), else the batch's first."""
    for i, source in enumerate(sources):
        try:
            function(prompts[i : i + 1], completions[i : i + 1], rows[i : i + 1])
        except Exception as single:
            return source, single
    return sources[0], exc


def load_rewards(
    registry: Any,
    names: list[str],
    weights: list[float] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> Rewards:
    """Build the rewards ``names`` from the registry; a wrong name, weight count or option is
    a UsageError naming the key."""
    if not names:
        raise UsageError(
            f"llm.rewards: GRPO needs at least one reward (installed: {', '.join(registry.names())})"
        )
    if weights is not None and len(weights) != len(names):
        raise UsageError(f"llm.reward_weights has {len(weights)} values for {len(names)} rewards")
    specs = [registry.get(name, hint="llm.rewards") for name in names]
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UsageError(f"llm.reward_options.{unknown[0]}: no such reward in llm.rewards")
    functions = []
    for name, spec in zip(names, specs, strict=True):
        given = dict(options.get(name) or {})
        extra = sorted(set(given) - set(spec.options))
        if extra:
            allowed = ", ".join(spec.options) or "none"
            raise UsageError(
                f"llm.reward_options.{name}.{extra[0]}: unknown option (options: {allowed})"
            )
        functions.append(spec.factory(**given))
    return Rewards(list(names), functions, list(weights or [1.0] * len(names)))
