"""GRPO as a training method of the llm backend (``llm.method: grpo``).

A batch is ``batch_size`` prompts. Before the engine's forward, :meth:`GRPOMethod.count`
(which the engine calls on every micro-batch of an accumulation window first) samples the
window's completions with the current adapter, scores them with the rewards and turns
them into group-normalised advantages; :meth:`GRPOMethod.loss` is then the clipped
surrogate (plus ``beta`` × KL to the reference) with the ``loss_type`` normalisation, whose
sum and count the engine divides as TRL's GRPOTrainer does (:mod:`.objective`).

The reference is never a second model: the base with the adapter disabled, or the frozen
init adapter (as for DPO). With ``num_iterations`` above 1 the batch sampler hands every
window of prompts to the engine that many times; its completions are kept and reused, with
the log-probabilities of the policy that sampled them (``π_old``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorakit.api import DataError, LossOutput, TrainContext, UsageError, write_text
from lorakit_llm.data import LengthGroupedBatchSampler, split_rows
from lorakit_llm.grpo.generation import (
    Generated,
    Sampling,
    completion_logps,
    prompt_text,
    sample_completions,
)
from lorakit_llm.grpo.metrics import Window
from lorakit_llm.grpo.objective import advantages, loss_terms
from lorakit_llm.grpo.rewards import Rewards, load_rewards
from lorakit_llm.preference.method import REFERENCE, reference_of

#: Prompts whose completions are written to ``samples/`` on logging steps.
SAMPLE_PROMPTS = 4


@dataclass
class Rollout:
    """A micro-batch's completions, their rewards and advantages, and what the loss needs."""

    rows: list[int]
    generated: Generated
    rewards: torch.Tensor  # (completions, rewards) unweighted
    total: torch.Tensor  # (completions,) weighted sum
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    uses: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class PromptDataset(torch.utils.data.Dataset):
    """One item per prompt row of ``rows``: its index (the method keeps tokens and fields)."""

    def __init__(self, rows: list[int], lengths: list[int]) -> None:
        self.rows = rows
        self.lengths = [lengths[r] for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> int:
        return self.rows[index]


class RepeatedBatches(torch.utils.data.Sampler[list[int]]):
    """Each window of ``window`` batches of ``inner``, ``repeat`` times over."""

    def __init__(self, inner: Any, window: int, repeat: int) -> None:
        self.inner, self.window, self.repeat = inner, window, repeat

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(self.inner)
        for a in range(0, len(batches), self.window):
            for _ in range(self.repeat):
                yield from batches[a : a + self.window]

    def __len__(self) -> int:
        return len(self.inner) * self.repeat


class GRPOMethod:
    """The GRPO side of an :class:`~lorakit_llm.backend.LLMBackend`."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.section = section = backend.section
        self.beta = section.preference_beta()
        self.epsilon_high = section.epsilon_high or section.epsilon
        self.sampling = Sampling(
            section.num_generations,
            section.max_completion_length,
            section.temperature,
            section.top_p,
            section.top_k,
        )
        self.rewards: Rewards | None = None
        self.records: list[dict[str, Any]] = []  # the training rows, then eval_data's
        self.prompts: list[list[int]] = []
        self.texts: list[str] = []
        self.eval_rows: list[int] = []
        self.window = Window()
        self.kept: dict[tuple[int, ...], Rollout] = {}
        self.last: Rollout | None = None

    # -- reference ---------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.beta != 0.0

    def reference(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        return reference_of(self.backend.model)

    def after_save(self, directory: Path) -> None:
        import shutil

        extra = directory / REFERENCE
        if extra.is_dir() and REFERENCE in self.backend.model.peft_config:
            shutil.rmtree(extra)

    # -- data --------------------------------------------------------------------------
    def check(self, cuda: bool) -> None:
        """Refusals that need no model: vLLM, eval sets."""
        section = self.section
        if section.use_vllm:
            raise UsageError(
                "llm.use_vllm: vLLM generation needs CUDA"
                if not cuda
                else "llm.use_vllm: vLLM generation is not available yet; set it to false"
            )

    def dataset(self, ctx: TrainContext, key: str) -> PromptDataset:
        backend, section = self.backend, self.section
        self.check(ctx.accelerator.device.type == "cuda")
        self.rewards = load_rewards(
            ctx.registries.rewards,
            section.rewards,
            section.reward_weights,
            section.reward_options,
        )
        records = backend.records or []
        if not backend.template:
            raise DataError("GRPO needs a chat template (set llm.chat_template)")
        self.records = [*records, *(backend.eval_records or [])]
        self.texts = [
            prompt_text(backend.tokenizer, r["prompt"], backend.template) for r in self.records
        ]
        encoded = backend.tokenizer(self.texts, add_special_tokens=False, verbose=False)
        self.prompts = [list(ids)[-section.max_seq_len :] for ids in encoded["input_ids"]]
        truncated = sum(len(ids) > section.max_seq_len for ids in encoded["input_ids"])
        train_rows, self.eval_rows = split_rows(
            len(records), section.eval_split, backend.config.train.seed
        )
        if backend.eval_records:
            self.eval_rows = list(range(len(records), len(self.records)))
        dataset = PromptDataset(train_rows, [len(p) for p in self.prompts])
        backend.stats = {
            "format": backend.reader_name,
            "records": len(records),
            "rows": len(records),
            "truncated": truncated,
            "dropped": 0,
            "tokens": sum(dataset.lengths),
            "target_tokens": 0,
            "packed": False,
            "layout": "padded",
            "cached": False,
            "train_rows": len(dataset),
            "eval_rows": len(self.eval_rows),
            "method": "grpo",
        }
        weights = ", ".join(
            f"{n}×{w:g}" for n, w in zip(self.rewards.names, self.rewards.weights, strict=True)
        )
        reference = "no reference (beta 0)"
        if self.needs_reference:
            where = (
                "init_adapter kept frozen"
                if backend.config.train.init_adapter
                else ("base model with the adapter disabled")
            )
            reference = f"KL beta {self.beta:g} to the {where}"
        ctx.log(
            f"llm: grpo on {len(records)} prompts ({backend.reader_name}), batches of "
            f"{backend.config.train.batch_size} prompts × {section.num_generations} completions "
            f"(≤ {section.max_completion_length} tokens, temperature {section.temperature:g}); "
            f"rewards {weights}; {section.loss_type} loss, epsilon {section.epsilon:g}/"
            f"{self.epsilon_high:g}, scale_rewards {section.scale_rewards}, num_iterations "
            f"{section.num_iterations}; {reference}"
        )
        save = backend.config.train.save_steps
        if section.num_iterations > 1 and save and save % section.num_iterations:
            ctx.log(
                f"warning: save_steps {save} is not a multiple of num_iterations "
                f"{section.num_iterations}: a run resumed from such a checkpoint samples fresh "
                "completions for the batch it stopped in"
            )
        if self.eval_rows:
            ctx.log(f"llm: mean reward on {len(self.eval_rows)} held-out prompts")
        if truncated:
            ctx.log(f"llm: {truncated} prompts were longer than max_seq_len and were cut")
        return dataset

    def collate(self, items: list[int]) -> dict[str, Any]:
        return {"rows": torch.tensor(items), "num_rows": torch.tensor(len(items))}

    def batch_sampler(self, dataset: Any, batch_size: int, seed: int) -> Any:
        inner = LengthGroupedBatchSampler(dataset.lengths, batch_size, seed)
        repeat = self.section.num_iterations
        if repeat == 1:
            return inner
        return RepeatedBatches(inner, self.backend.config.train.gradient_accumulation_steps, repeat)

    # -- rollouts ----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        accelerator = self.backend.accelerator
        return accelerator.autocast() if accelerator else contextlib.nullcontext()

    def rollout(self, batch: dict[str, Any]) -> Rollout:
        """The batch's rollout: made once per batch (kept ``num_iterations`` times)."""
        if "rollout" in batch:
            found: Rollout = batch["rollout"]
            return found
        rows = [int(r) for r in batch["rows"]]
        key = tuple(rows)
        kept = self.kept.get(key)
        if kept is None or kept.uses >= self.section.num_iterations:
            kept = self.make_rollout(rows)
            self.kept = {k: v for k, v in self.kept.items() if v.uses < self.section.num_iterations}
            self.kept[key] = kept
            self.window.add_rollout(kept.metrics)
        kept.uses += 1
        batch["rollout"] = kept
        return kept

    def make_rollout(self, rows: list[int], generated: Generated | None = None) -> Rollout:
        """Sample (unless ``generated`` is given), score and normalise one micro-batch."""
        backend, section = self.backend, self.section
        model = backend.model
        if generated is None:
            with self.autocast():
                generated = sample_completions(
                    model,
                    backend.tokenizer,
                    [self.prompts[r] for r in rows],
                    backend.template,
                    self.sampling,
                )
        assert self.rewards is not None
        n = section.num_generations
        rewards, total = self.score(rows, generated)
        adv, std = advantages(total, n, section.scale_rewards)
        rollout = Rollout(rows, generated, rewards, total, adv)
        device = next(model.parameters()).device
        tensors = self._tensors(rollout, device)
        if section.num_iterations > 1:
            with torch.no_grad(), self.autocast():
                rollout.old_logps = completion_logps(
                    backend.train_module or model, *tensors, section.temperature
                ).cpu()
        if self.needs_reference:
            with self.reference() as reference, self.autocast():
                rollout.ref_logps = completion_logps(reference, *tensors, section.temperature).cpu()
        rollout.metrics = self.window.rollout_metrics(
            rollout.rewards, total, std, generated, self.rewards.names
        )
        self.last = rollout
        return rollout

    def score(self, rows: list[int], generated: Generated) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rewards per completion and reward, weighted total per completion)``."""
        assert self.rewards is not None
        expanded = [r for r in rows for _ in range(self.section.num_generations)]
        records = self.records
        per_reward = self.rewards.score(
            [self.texts[r] for r in expanded],
            generated.texts,
            [records[r]["fields"] for r in expanded],
            [records[r]["source"] for r in expanded],
        )
        rewards = torch.tensor(per_reward, dtype=torch.float32).T
        return rewards, torch.tensor(self.rewards.total(per_reward), dtype=torch.float32)

    @staticmethod
    def _tensors(
        rollout: Rollout, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = rollout.generated
        return (
            g.prompt_ids.to(device),
            g.prompt_mask.to(device),
            g.completion_ids.to(device),
            g.completion_mask.to(device),
        )

    # -- loss --------------------------------------------------------------------------
    def count(self, batch: dict[str, Any]) -> float:
        """What the engine divides the loss sums by (TRL's normalisation, see objective)."""
        rollout = self.rollout(batch)
        mask = rollout.generated.completion_mask
        return {
            "grpo": float(len(mask)),
            "bnpo": 1.0,
            "dr_grpo": float(len(mask)),
            "dapo": float(mask.sum()),
        }[self.section.loss_type]

    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        rollout = self.rollout(batch)
        section = self.section
        device = next(module.parameters()).device
        tensors = self._tensors(rollout, device)
        logps = completion_logps(module, *tensors, section.temperature)
        terms = loss_terms(
            logps,
            tensors[3],
            rollout.advantages.to(device),
            old_logps=None if rollout.old_logps is None else rollout.old_logps.to(device),
            ref_logps=None if rollout.ref_logps is None else rollout.ref_logps.to(device),
            beta=self.beta,
            epsilon=section.epsilon,
            epsilon_high=self.epsilon_high,
            loss_type=section.loss_type,
            max_completion_length=section.max_completion_length,
            bias_correction_kl=section.use_bias_correction_kl,
        )
        if torch.is_grad_enabled():
            self.window.add_loss(terms, float(tensors[3].sum()))
        return LossOutput(terms.loss_sum, samples=len(tensors[0]), tokens=int(tensors[3].sum()))

    # -- metrics and samples -------------------------------------------------------------
    def step_metrics(self, step: int, total: int) -> dict[str, float]:
        """TRL's GRPO metrics since the last log, on logging steps (and the completions of a
        few prompts written to ``samples/completions-step-N.jsonl``)."""
        out: dict[str, float] = {}
        logging = self.backend.config.train.logging_steps
        accelerator = self.backend.accelerator
        if step % logging == 0 or step == total:
            out.update(self.window.means(accelerator))
            if self.last is not None and (accelerator is None or accelerator.is_main_process):
                self.write_samples(step, self.last)
        if self.eval_rows:
            every = self.section.eval_steps or max(total // 10, 1)
            if step % every == 0 or step == total:
                from lorakit_llm.grpo.evaluation import evaluate

                out.update(evaluate(self, self.eval_rows))
        return out

    def write_samples(self, step: int, rollout: Rollout) -> Path:
        assert self.rewards is not None
        n = self.section.num_generations
        records = self.records
        lines = []
        for i, row in enumerate(rollout.rows[:SAMPLE_PROMPTS]):
            for j in range(i * n, (i + 1) * n):
                rewards = dict(zip(self.rewards.names, rollout.rewards[j].tolist(), strict=True))
                lines.append(
                    json.dumps(
                        {
                            "step": step,
                            "source": records[row]["source"],
                            "prompt": self.texts[row],
                            "completion": rollout.generated.texts[j],
                            "reward": float(rollout.total[j]),
                            "rewards": rewards,
                            "advantage": float(rollout.advantages[j]),
                        },
                        ensure_ascii=False,
                    )
                )
        path = Path(self.backend.config.train.output_dir) / "samples"
        path = path / f"completions-step-{step}.jsonl"
        write_text(path, "\n".join(lines) + "\n")
        return path
