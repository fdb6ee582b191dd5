"""GRPO's eval: the mean reward of completions sampled for held-out prompts.

Every ``eval_steps`` (and at the end) each held-out prompt (``eval_split`` or ``eval_data``)
gets ``num_generations`` completions, sampled as in training but from a fixed seed (the
training RNG is set aside and restored, so evaluating never changes what training samples),
in batches of ``batch_size`` prompts. Logged as ``eval_reward``, ``eval_reward_std``,
``eval_rewards/<name>/mean`` and ``eval_completions/mean_length``.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit_llm.grpo.generation import sample_completions

#: Seed of the eval's sampling, the same at every eval.
EVAL_SEED = 1234


def evaluate(method: Any, rows: list[int]) -> dict[str, float]:
    backend = method.backend
    assert method.rewards is not None
    model = backend.model
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    size = backend.config.train.batch_size
    rewards, totals, lengths = [], [], []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(EVAL_SEED)
        for a in range(0, len(rows), size):
            chunk = rows[a : a + size]
            with method.autocast():
                generated = sample_completions(
                    model,
                    backend.tokenizer,
                    [method.prompts[r] for r in chunk],
                    backend.template,
                    method.sampling,
                )
            per_reward, total = method.score(chunk, generated)
            rewards.append(per_reward)
            totals.append(total)
            lengths.append(generated.completion_mask.sum(dim=1).float())
    reward, total, length = torch.cat(rewards), torch.cat(totals), torch.cat(lengths)
    out = {
        "eval_reward": float(total.mean()),
        "eval_reward_std": float(total.std()) if len(total) > 1 else 0.0,
        "eval_completions/mean_length": float(length.mean()),
    }
    for i, name in enumerate(method.rewards.names):
        out[f"eval_rewards/{name}/mean"] = float(reward[:, i].mean())
    return out
