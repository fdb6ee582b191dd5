"""The preference losses, per pair, from the papers (and as TRL computes them).

Inputs are per-pair log-probabilities of the answers under the policy and, for DPO, the
reference: summed over the answer tokens (DPO, IPO), or averaged (ORPO, SimPO: the papers'
length normalisation). Each function returns ``(losses, chosen_rewards, rejected_rewards)``,
one value per pair; the implicit rewards are what TRL logs as ``rewards/*``.

- DPO (Rafailov et al. 2023): ``h = (π_c - π_r) - (ref_c - ref_r)``,
  ``loss = -(1 - ε) log σ(β h) - ε log σ(-β h)`` (``ε``: label smoothing, cDPO),
  rewards ``β (π - ref)``. IPO (Azar et al. 2023): ``(h - 1 / (2β))²`` with ``h`` on
  per-token log-ratios (TRL's normalisation, confirmed with the IPO authors).
- ORPO (Hong et al. 2024): ``NLL(chosen) - λ log σ(log odds(c) - log odds(r))`` with
  ``log odds(y) = log p - log(1 - p)`` of the mean log-prob ``log p``; no reference;
  rewards ``λ log p``.
- SimPO (Meng et al. 2024): ``-(1 - ε) log σ(β (π_c - π_r) - γ) - ε log σ(-(...))`` on
  mean log-probs; no reference; rewards ``β π``.
"""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

Losses = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _smoothed(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    return -(1 - smoothing) * logsigmoid(logits) - smoothing * logsigmoid(-logits)


def dpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Losses:
    """DPO's sigmoid loss on summed log-probs; with ``lengths`` (answer tokens of chosen and
    rejected), IPO's squared loss on the per-token log-ratios."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if lengths is not None:
        h = chosen_ratio / lengths[0].clamp_min(1) - rejected_ratio / lengths[1].clamp_min(1)
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = _smoothed(beta * (chosen_ratio - rejected_ratio), label_smoothing)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and far below (Mächler 2012)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds_ratio(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``log odds(c) - log odds(r)`` of mean log-probs (both below 0)."""
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


def orpo(chosen: torch.Tensor, rejected: torch.Tensor, lam: float) -> Losses:
    """ORPO: the chosen answer's NLL (per token) plus λ times the odds-ratio loss."""
    losses = -chosen - lam * logsigmoid(log_odds_ratio(chosen, rejected))
    return losses, lam * chosen.detach(), lam * rejected.detach()


def simpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> Losses:
    """SimPO: length-normalised rewards with a target margin γ, no reference."""
    losses = _smoothed(beta * (chosen - rejected) - gamma, label_smoothing)
    return losses, beta * chosen.detach(), beta * rejected.detach()
