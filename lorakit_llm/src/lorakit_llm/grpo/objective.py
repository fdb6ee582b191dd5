"""GRPO's advantages and loss, from the papers, as TRL computes them.

- Advantages (Shao et al. 2024, DeepSeekMath): a completion's reward minus the mean reward
  of its group (the ``num_generations`` completions of one prompt), divided by the group's
  standard deviation (``scale_rewards: group``), the whole batch's (``batch``, as
  Dr. GRPO's critics suggest), or not at all (``none``; Liu et al. 2025). The std is the
  unbiased one, and ``1e-4`` is added to it, as TRL does.
- Per token: the ratio ``r = exp(logπ - logπ_old)``, the clipped surrogate
  ``-min(r A, clip(r, 1 - ε, 1 + ε_high) A)`` (PPO's clip; DAPO's asymmetric ``ε_high``),
  plus ``β`` times the k3 estimate of KL(π‖π_ref): ``exp(ref - logπ) - (ref - logπ) - 1``,
  multiplied by the ratio ``r`` (``use_bias_correction_kl``, DeepSeek-V3.2: the unbiased
  reverse-KL gradient, TRL's default; ``r`` is 1 in value on-policy but not in gradient).
- Normalisation (``loss_type``): ``grpo`` averages each completion's tokens, then the
  completions; ``bnpo`` averages the micro-batch's tokens; ``dr_grpo`` divides the token sum
  by ``completions × max_completion_length``; ``dapo`` divides it by the completion tokens
  of the whole accumulation window. :func:`loss_terms` returns the sum and the count the
  engine divides it by, so each matches TRL's loss over a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def advantages(
    rewards: torch.Tensor, num_generations: int, scale: str = "group"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, std)`` of ``rewards`` laid out group after group."""
    groups = rewards.view(-1, num_generations)
    mean = groups.mean(dim=1).repeat_interleave(num_generations)
    if scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else rewards * 0
    elif num_generations > 1:
        std = groups.std(dim=1).repeat_interleave(num_generations)
    else:
        std = torch.zeros_like(rewards)
    out = rewards - mean
    if scale != "none":
        out = out / (std + 1e-4)
    return out, std


@dataclass
class Terms:
    """One micro-batch's loss contribution and what TRL logs about it."""

    loss_sum: torch.Tensor
    count: float
    kl: torch.Tensor | None  # mean per-token KL of the micro-batch
    clip_low: torch.Tensor  # fraction of tokens clipped below (A < 0, r < 1 - ε)
    clip_high: torch.Tensor  # fraction clipped above (A > 0, r > 1 + ε_high)
    clip_region: torch.Tensor  # either


def per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    adv: torch.Tensor,
    *,
    beta: float,
    epsilon: float,
    epsilon_high: float,
    bias_correction_kl: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(loss per token, k3 KL per token or None, ratio)``, all ``(completions, tokens)``."""
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    a = adv.unsqueeze(1)
    loss = -torch.min(ratio * a, clipped * a)
    kl = None
    if beta != 0.0:
        assert ref_logps is not None
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        if bias_correction_kl:
            kl = kl * ratio
        loss = loss + beta * kl
    return loss, kl, ratio


def loss_terms(
    logps: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    *,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    max_completion_length: int = 256,
    bias_correction_kl: bool = True,
) -> Terms:
    """The micro-batch's loss sum and count (the engine divides the window's sums by its
    counts) for ``loss_type``, with TRL's logged statistics."""
    high = epsilon if epsilon_high is None else epsilon_high
    loss, kl, ratio = per_token_loss(
        logps,
        old_logps,
        ref_logps,
        adv,
        beta=beta,
        epsilon=epsilon,
        epsilon_high=high,
        bias_correction_kl=bias_correction_kl,
    )
    mask = mask.to(loss.dtype)
    tokens = mask.sum()
    masked = (loss * mask).sum(-1)
    if loss_type == "grpo":
        loss_sum, count = (masked / mask.sum(-1).clamp(min=1.0)).sum(), float(len(loss))
    elif loss_type == "bnpo":
        loss_sum, count = masked.sum() / tokens.clamp(min=1.0), 1.0
    elif loss_type == "dr_grpo":
        loss_sum, count = masked.sum() / max_completion_length, float(len(loss))
    elif loss_type == "dapo":
        loss_sum, count = masked.sum(), float(tokens)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    a = adv.unsqueeze(1)
    low = ((ratio < 1 - epsilon) & (a < 0)).to(loss.dtype)
    up = ((ratio > 1 + high) & (a > 0)).to(loss.dtype)
    denominator = tokens.clamp(min=1.0)
    return Terms(
        loss_sum=loss_sum,
        count=count,
        kl=None if kl is None else ((kl.detach() * mask).sum() / denominator),
        clip_low=((low * mask).sum() / denominator).detach(),
        clip_high=((up * mask).sum() / denominator).detach(),
        clip_region=(((low + up) * mask).sum() / denominator).detach(),
    )
