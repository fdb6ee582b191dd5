"""GRPO's logged metrics, in TRL's names, averaged over the micro-batches since the last log.

Per rollout: ``reward``, ``reward_std`` (of the batch's rewards), ``frac_reward_zero_std``,
``rewards/<name>/mean`` and ``/std``, ``completions/mean_length``, ``/min_length``,
``/max_length`` and ``/clipped_ratio`` (no stop token within max_completion_length). Per
loss: ``kl`` (when beta is set) and ``clip_ratio/low_mean``, ``/high_mean``,
``/region_mean``, weighted by completion tokens. ``*min_length`` is the least and
``*max_length`` the most since the last log; the others are means. Across processes the
values are averaged.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit_llm.grpo.generation import Generated
from lorakit_llm.grpo.objective import Terms


class Window:
    """Sums of the metrics since the last log."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def _add(self, name: str, value: float, weight: float = 1.0) -> None:
        if name.endswith(("min_length", "max_length")):
            pick = min if name.endswith("min_length") else max
            self.sums[name] = pick(self.sums.get(name, value), value)
            self.weights[name] = 1.0
            return
        self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def add_rollout(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._add(name, value)

    def add_loss(self, terms: Terms, tokens: float) -> None:
        if terms.kl is not None:
            self._add("kl", float(terms.kl), tokens)
        self._add("clip_ratio/low_mean", float(terms.clip_low), tokens)
        self._add("clip_ratio/high_mean", float(terms.clip_high), tokens)
        self._add("clip_ratio/region_mean", float(terms.clip_region), tokens)

    @staticmethod
    def rollout_metrics(
        rewards: torch.Tensor,
        total: torch.Tensor,
        std: torch.Tensor,
        generated: Generated,
        names: list[str],
    ) -> dict[str, float]:
        lengths = generated.completion_mask.sum(dim=1).float()
        out = {
            "reward": float(total.mean()),
            "reward_std": float(total.std()) if len(total) > 1 else 0.0,
            "frac_reward_zero_std": float(torch.isclose(std, torch.zeros_like(std)).float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(generated.truncated.float().mean()),
        }
        for i, name in enumerate(names):
            column = rewards[:, i]
            out[f"rewards/{name}/mean"] = float(column.mean())
            out[f"rewards/{name}/std"] = float(column.std()) if len(column) > 1 else 0.0
        return out

    def means(self, accelerator: Any = None) -> dict[str, float]:
        """The means since the last call (averaged over processes), and a fresh window."""
        names = sorted(self.sums)
        if not names:
            return {}
        values = torch.tensor([self.sums[n] / max(self.weights[n], 1e-12) for n in names])
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
        self.sums, self.weights = {}, {}
        return dict(zip(names, values.tolist(), strict=True))
