"""DPO, ORPO and SimPO as training methods of the llm backend.

The backend hands its data, batching, loss and step metrics to a :class:`PreferenceMethod`
when ``llm.method`` is not ``sft``. The engine stays as it is: ``count`` is the number of
pairs and ``loss`` the summed per-pair loss, so its normalisation gives TRL's mean over the
pairs of the whole accumulation window (and processes).

The DPO reference is never a second model: it is the base with the adapter disabled
(``disable_adapter()``), or, when training starts from ``init_adapter``, that adapter kept
frozen in a second adapter slot (``reference``). With ``precompute_ref_logps`` the
reference log-probs are computed once before training and cached with the tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lorakit.api import DataError, LossOutput, TrainContext, UsageError, save_safetensors
from lorakit_llm.data import LengthGroupedBatchSampler, split_rows
from lorakit_llm.preference import losses
from lorakit_llm.preference.data import PairCollator, PairData, PairDataset, tokenize_pairs
from lorakit_llm.preference.logps import sequence_logps
from lorakit_llm.tokenize import cache_key, cache_path, load_cached, save_cached

#: The adapter slot holding the frozen init_adapter (the DPO reference).
REFERENCE = "reference"
#: What TRL logs, in its names.
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@contextlib.contextmanager
def reference_of(model: Any) -> Iterator[torch.nn.Module]:
    """``model`` as the reference, inside ``no_grad``: the frozen init adapter in the
    :data:`REFERENCE` slot when there is one, else the base with the adapter disabled."""
    with torch.no_grad():
        if REFERENCE in model.peft_config:
            model.base_model.set_adapter(REFERENCE)
            try:
                yield model
            finally:
                model.base_model.set_adapter("default")  # trainable again, reference frozen
        else:
            with model.disable_adapter():
                yield model


class PreferenceMethod:
    """The preference side of an :class:`~lorakit_llm.backend.LLMBackend`."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.section = backend.section
        self.method = self.section.method
        self.beta = self.section.preference_beta()
        self.eval_set: PairDataset | None = None
        self.window: list[torch.Tensor] = []
        self.collator: PairCollator | None = None

    # -- reference ---------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.method == "dpo"

    def reference_words(self) -> str:
        if not self.needs_reference:
            return f"no reference model ({self.method})"
        if self.backend.config.train.init_adapter:
            where = "init_adapter kept frozen in a second adapter slot"
        else:
            where = "base model with the adapter disabled"
        when = "precomputed once and cached" if self.section.precompute_ref_logps else "every step"
        return f"reference: the {where}, log-probs {when}"

    def reference(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The model as the reference, inside ``no_grad``."""
        return reference_of(self.backend.model)

    def reference_logps(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_logps" in batch:
            ref = batch["ref_logps"].to(torch.float32)
            return ref[:, 0], ref[:, 1]
        with self.reference() as model:
            sums, counts = sequence_logps(model, batch)
        pairs = int(batch["num_rows"])
        return sums[:pairs], sums[pairs:]

    def after_save(self, directory: Path) -> None:
        """Keep the adapter folder to the trained adapter: PEFT also writes every other slot
        (the frozen reference) into a subfolder of its name."""
        import shutil

        extra = directory / REFERENCE
        if extra.is_dir() and REFERENCE in self.backend.model.peft_config:
            shutil.rmtree(extra)

    # -- data --------------------------------------------------------------------------
    def _tokens(self, ctx: TrainContext, key: str, records: list[Any]) -> tuple[PairData, bool]:
        paths = [cache_path(ctx.cache_dir, f"{key}-{side}") for side in ("chosen", "rejected")]
        with ctx.accelerator.main_process_first():
            cached = [load_cached(p) for p in paths]
            if cached[0] is not None and cached[1] is not None:
                return PairData(cached[0], cached[1]), True
            data = tokenize_pairs(
                records,
                self.backend.tokenizer,
                self.backend.template,
                max_seq_len=self.section.max_seq_len,
            )
            if ctx.accelerator.is_main_process:
                save_cached(data.chosen, paths[0])
                save_cached(data.rejected, paths[1])
        return data, False

    def dataset(self, ctx: TrainContext, key: str) -> PairDataset:
        backend, section, train = self.backend, self.section, self.backend.config.train
        data, cached = self._tokens(ctx, key, backend.records)
        if len(data) == 0:
            raise DataError("no pair has an answer token to learn from", where=train.train_data_dir)
        train_rows, eval_rows = split_rows(len(data), section.eval_split, train.seed)
        held: PairData | None = data if eval_rows else None
        if held is None and backend.eval_records is not None:
            held = tokenize_pairs(
                backend.eval_records,
                backend.tokenizer,
                backend.template,
                max_seq_len=section.max_seq_len,
            )
            if len(held) == 0:
                raise DataError("no eval pair has an answer token", where=section.eval_data)
            eval_rows = list(range(len(held)))
        ref = held_ref = None
        if self.needs_reference and section.precompute_ref_logps:
            ref = self._cached_reference(ctx, f"{key}-ref", data)
            if held is not None:
                held_ref = ref if held is data else self._precompute(held)
        dataset = PairDataset(data, train_rows, ref)
        if held is not None:
            self.eval_set = PairDataset(held, eval_rows, held_ref)
        self.collator = PairCollator(backend.tokenizer.pad_token_id or 0, backend.layout)
        chosen, rejected = data.chosen, data.rejected
        backend.stats = {
            "format": backend.reader_name,
            "records": chosen.records,
            "rows": len(data),
            "truncated": chosen.truncated,
            "dropped": chosen.dropped,
            "target_tokens": chosen.target_tokens() + rejected.target_tokens(),
            "tokens": int(chosen.offsets[-1] + rejected.offsets[-1]),
            "packed": backend.packing,
            "layout": backend.layout,
            "cached": cached,
            "train_rows": len(dataset),
            "eval_rows": len(self.eval_set or ()),
            "method": self.method,
        }
        self._header(ctx, dataset)
        return dataset

    def _header(self, ctx: TrainContext, dataset: PairDataset) -> None:
        from lorakit_llm.packing import LAYOUT_WORDS

        stats, section = self.backend.stats, self.section
        options = {
            "dpo": f"beta {self.beta}, {section.dpo_loss} loss",
            "orpo": f"lambda {self.beta}",
            "simpo": f"beta {self.beta}, gamma {section.gamma}",
        }[self.method]
        if section.label_smoothing and self.method != "orpo":
            options += f", label_smoothing {section.label_smoothing}"
        ctx.log(
            f"llm: {self.method} ({options}) on {stats['rows']} pairs ({self.backend.reader_name}), "
            f"{stats['tokens']:,} tokens, batches of {self.backend.config.train.batch_size} "
            f"pairs (chosen and rejected in one forward, {LAYOUT_WORDS[self.backend.layout]})"
            f"{' (tokenization cached)' if stats['cached'] else ''}; {self.reference_words()}"
        )
        if self.eval_set is not None:
            ctx.log(f"llm: preference accuracy on {len(self.eval_set)} held-out pairs")
        if stats["truncated"] or stats["dropped"]:
            ctx.log(
                f"llm: {stats['truncated']} rows were longer than max_seq_len "
                f"{section.max_seq_len} and were truncated; {stats['dropped']} pairs had no "
                f"answer token left and were skipped"
            )

    def _precompute(self, data: PairData) -> torch.Tensor:
        """Reference log-probs ``(pairs, 2)`` of every pair, in batches."""
        collator = PairCollator(self.backend.tokenizer.pad_token_id or 0, self.backend.layout)
        device = next(self.backend.model.parameters()).device
        accelerator = self.backend.accelerator
        autocast = accelerator.autocast() if accelerator else contextlib.nullcontext()
        full = PairDataset(data)
        out = torch.zeros(len(data), 2)
        size = self.backend.config.train.batch_size
        with autocast:
            for a in range(0, len(full), size):
                rows = list(range(a, min(a + size, len(full))))
                batch = {k: v.to(device) for k, v in collator([full[i] for i in rows]).items()}
                chosen, rejected = self.reference_logps(batch)
                out[rows] = torch.stack([chosen, rejected], 1).float().cpu()
        return out

    def _cached_reference(self, ctx: TrainContext, key: str, data: PairData) -> torch.Tensor:
        from safetensors.torch import load_file

        init = self.backend.config.train.init_adapter
        digest = cache_key(adapter=_adapter_fingerprint(init), dtype=str(ctx.weight_dtype))
        path = cache_path(ctx.cache_dir, f"{key}-{digest}")
        with ctx.accelerator.main_process_first():
            if path.is_file():
                try:
                    ref = load_file(str(path))["ref_logps"]
                    if ref.shape == (len(data), 2):
                        return ref
                except Exception:  # a damaged cache is recomputed
                    pass
            ref = self._precompute(data)
            if ctx.accelerator.is_main_process:
                save_safetensors({"ref_logps": ref}, path, metadata={"format": "pt"})
        return ref

    # -- batches -----------------------------------------------------------------------
    def collate(self, items: list[Any]) -> Any:
        assert self.collator is not None
        return self.collator(items)

    def batch_sampler(self, dataset: Any, batch_size: int, seed: int) -> Any:
        return LengthGroupedBatchSampler(dataset.lengths, batch_size, seed)

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["num_rows"])  # pairs

    # -- loss --------------------------------------------------------------------------
    def pair_losses(
        self, module: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pair: ``(losses, chosen reward, rejected reward, chosen logp, rejected logp)``;
        the log-probs summed over the answer (DPO, IPO) or per token (ORPO, SimPO), as TRL
        logs them."""
        pairs = int(batch["num_rows"])
        sums, counts = sequence_logps(module, batch)
        section = self.section
        if self.method == "dpo":
            chosen, rejected = sums[:pairs], sums[pairs:]
            ref_chosen, ref_rejected = self.reference_logps(batch)
            ipo = section.dpo_loss == "ipo"
            out = losses.dpo(
                chosen,
                rejected,
                ref_chosen,
                ref_rejected,
                self.beta,
                section.label_smoothing,
                lengths=(counts[:pairs], counts[pairs:]) if ipo else None,
            )
        else:
            mean = sums / counts.clamp_min(1)
            chosen, rejected = mean[:pairs], mean[pairs:]
            if self.method == "orpo":
                out = losses.orpo(chosen, rejected, self.beta)
            else:
                out = losses.simpo(
                    chosen, rejected, self.beta, section.gamma, section.label_smoothing
                )
        return (*out, chosen.detach(), rejected.detach())

    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        pair_loss, good, bad, chosen, rejected = self.pair_losses(module, batch)
        if torch.is_grad_enabled():
            self.window.append(_metric_sums(good, bad, chosen, rejected))
        return LossOutput(
            pair_loss.sum(), samples=int(batch["num_rows"]), tokens=int(batch["num_tokens"])
        )

    # -- metrics -----------------------------------------------------------------------
    def step_metrics(self, step: int, total: int) -> dict[str, float]:
        """TRL's reward metrics, averaged over the pairs since the last log (all processes),
        on logging steps; the eval metrics every ``eval_steps`` and at the end."""
        out: dict[str, float] = {}
        logging = self.backend.config.train.logging_steps
        if (step % logging == 0 or step == total) and self.window:
            sums = torch.stack(self.window).sum(0).to(self._device())
            self.window = []
            accelerator = self.backend.accelerator
            if accelerator is not None and accelerator.num_processes > 1:
                sums = accelerator.reduce(sums, reduction="sum")
            out.update(_metric_means(sums.cpu(), ""))
        if self.eval_set is not None:
            every = self.section.eval_steps or max(total // 10, 1)
            if step % every == 0 or step == total:
                out.update(self.evaluate())
        return out

    def _device(self) -> torch.device:
        return next(self.backend.model.parameters()).device

    def evaluate(self) -> dict[str, float]:
        """Mean loss and reward metrics over the held-out pairs, without dropout."""
        assert self.eval_set is not None
        backend = self.backend
        module = backend.train_module or backend.model
        device = self._device()
        autocast = (
            backend.accelerator.autocast() if backend.accelerator else contextlib.nullcontext()
        )
        was_training = module.training
        module.eval()
        parts = []
        size = backend.config.train.batch_size
        try:
            with torch.no_grad(), autocast:
                for a in range(0, len(self.eval_set), size):
                    items = [self.eval_set[i] for i in range(a, min(a + size, len(self.eval_set)))]
                    batch = {k: v.to(device) for k, v in self.collate(items).items()}
                    pair_loss, good, bad, chosen, rejected = self.pair_losses(module, batch)
                    sums = _metric_sums(good, bad, chosen, rejected)
                    parts.append(torch.cat([sums, pair_loss.sum()[None].float()]))
        finally:
            module.train(was_training)
        total = torch.stack(parts).sum(0).cpu()
        metrics = _metric_means(total[:-1], "eval_")
        metrics["eval_loss"] = float(total[-1] / total[len(METRICS)])
        return metrics


def _metric_sums(
    good: torch.Tensor, bad: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor
) -> torch.Tensor:
    """Sums of the metrics of :data:`METRICS` over a batch's pairs, then the pair count."""
    values = [good, bad, (good > bad).float(), good - bad, chosen, rejected]
    sums = [v.detach().float().sum() for v in values]
    return torch.stack([*sums, good.new_tensor(float(len(good)))]).float()


def _metric_means(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    pairs = max(float(sums[len(METRICS)]), 1.0)
    return {f"{prefix}{name}": float(sums[i]) / pairs for i, name in enumerate(METRICS)}


def _adapter_fingerprint(folder: str | None) -> str:
    """sha256 of an adapter folder's files (empty without one)."""
    if not folder:
        return ""
    from lorakit_llm.tokenize import files_fingerprint

    path = Path(folder).expanduser()
    return files_fingerprint(sorted(p for p in path.iterdir() if p.is_file()))


def check_method_data(method: str, reader: str) -> None:
    """A preference method reads preference rows, GRPO prompt rows; SFT neither."""
    if method == "grpo" or reader == "prompt":
        if method != "grpo" or reader != "prompt":
            raise UsageError(
                "llm.method grpo trains on prompt rows (prompt plus the fields the rewards "
                f"read); the data was read as '{reader}' (set llm.dataset_format: prompt)"
                if method == "grpo"
                else "the data holds prompt rows without answers: set llm.method: grpo "
                "(with llm.rewards) to learn from rewards"
            )
        return
    if method != "sft" and reader != "preference":
        raise UsageError(
            f"llm.method {method} trains on prompt/chosen/rejected pairs; the data was read "
            f"as '{reader}' (set llm.dataset_format: preference or use preference rows)"
        )
    if method == "sft" and reader == "preference":
        raise UsageError(
            "the data holds prompt/chosen/rejected pairs: set llm.method to dpo, orpo or "
            "simpo (sft trains on single answers)"
        )
