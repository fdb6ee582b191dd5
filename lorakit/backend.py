"""The contract between the engine and a model backend.

A backend plugin registers a :class:`lorakit.backend_plugin.BackendPlugin` whose ``create`` returns a
:class:`Backend`. The engine owns accelerate, precision, the optimizer, the loop,
checkpoints and trackers; the backend owns the model, the data and the loss. Nothing here
imports torch at module level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from lorakit.config import Config
    from lorakit.export_view import AdapterExport
    from lorakit.registry import Registries


@dataclass
class LossOutput:
    """A micro-batch's loss, as a sum, and what it is a sum over.

    The engine divides ``loss_sum`` by the total :meth:`Backend.count` of the whole
    accumulation window (across processes), so batch 8 × accum 1 and batch 4 × accum 2 give
    the same update, and token losses weigh every token equally however the tokens fall
    into micro-batches. ``samples`` and ``tokens`` feed the throughput metrics.
    """

    loss_sum: torch.Tensor
    samples: int
    tokens: int = 0


@dataclass
class TrainContext:
    """What the engine hands a backend when it sets up a run."""

    config: Config
    accelerator: Accelerator
    output_dir: Path
    cache_dir: Path
    registries: Registries
    weight_dtype: torch.dtype
    log: Any = print


class Backend(ABC):
    """A model family lorakit can train LoRA adapters for.

    The engine calls a backend in this order, once each unless said otherwise:

    1. ``__init__(config)`` (the factory): cheap, loads nothing;
    2. :meth:`validate`: the data and model files, before anything heavy loads;
    3. :meth:`setup`: the base model, LoRA injected;
    4. :meth:`dataset`: the training data, caches built; then :meth:`collate` and
       :meth:`batch_sampler` for the data loader;
    5. :meth:`trainable_module` (it may use what ``dataset`` learnt, e.g. the caption
       length), then :meth:`optimizer_param_groups`;
    6. :meth:`set_train_module` with the accelerate-prepared module; ``started_at`` is set;
    7. each step: :meth:`count` and :meth:`loss` per micro-batch, :meth:`step_metrics`
       after each optimizer step; :meth:`sample` every ``sample_steps``;
    8. :meth:`adapter_export` at each export (the final one, ``lorakit export``), inside the
       engine's ``gathered()``: exporters receive its :class:`lorakit.export_view.AdapterExport`,
       never the backend;
    9. :meth:`teardown`.

    :meth:`dataset_fingerprint` and :meth:`export_metadata` are asked after ``dataset``.
    """

    #: "samples" or "tokens": what the throughput metric counts.
    throughput_unit: str = "samples"
    #: Exporters run at the end when the config does not name ``export_formats``.
    default_export_formats: tuple[str, ...] = ("safetensors",)

    #: Unix time the run first started (kept across resumes); the engine sets it after
    #: ``setup``, before training, for exporters that record it.
    started_at: float = 0.0

    def __init__(self, config: Config) -> None:
        self.config = config

    def validate(self, ctx: TrainContext) -> None:  # noqa: B027
        """Check the data and model files cheaply, before anything heavy loads.

        Raise :class:`lorakit.errors.DataError` / ``UsageError`` naming the file. Called
        before :meth:`setup`, so a broken dataset fails in a second, not after the model
        has loaded.
        """

    @abstractmethod
    def setup(self, ctx: TrainContext) -> None:
        """Load the base model, freeze it, inject LoRA, enable gradient checkpointing."""

    @abstractmethod
    def trainable_module(self) -> torch.nn.Module:
        """The module holding the LoRA parameters; the engine passes it to accelerate."""

    @abstractmethod
    def dataset(self, ctx: TrainContext) -> Any:
        """The training dataset (a map-style ``torch.utils.data.Dataset``), caches ready."""

    def collate(self, items: list[Any]) -> Any:
        """Turn dataset items into a batch (default: torch's default collate)."""
        from torch.utils.data import default_collate

        return default_collate(items)

    def batch_sampler(self, dataset: Any, batch_size: int, seed: int) -> Any | None:
        """Optional: a batch sampler with ``set_epoch`` (e.g. aspect-ratio buckets)."""
        return None

    def optimizer_param_groups(self, learning_rate: float) -> list[dict[str, Any]] | None:
        """Optional: parameter groups with their own ``lr`` (e.g. a text-encoder LR).

        Every trainable parameter must be in exactly one group. Default (None): one group
        at ``learning_rate``.
        """
        return None

    def count(self, batch: Any) -> int:
        """How many items ``loss(batch).loss_sum`` sums over (default: the batch size).

        Known before the forward pass: samples for images, target tokens for text.
        """
        first = batch[next(iter(batch))] if isinstance(batch, dict) else batch[0]
        return len(first)

    @abstractmethod
    def loss(self, module: torch.nn.Module, batch: Any) -> LossOutput:
        """Forward one micro-batch through ``module`` (the prepared trainable module).

        An out-of-memory error is left to propagate: the engine recognises it
        (:mod:`lorakit.engine.oom`) and halves the batch or fails the run with its ladder.
        """

    def set_train_module(self, module: torch.nn.Module) -> None:  # noqa: B027
        """Receive the accelerate-prepared module (wrapped for DDP etc.) before training."""

    def sample(self, ctx: TrainContext, step: int, directory: Path) -> list[Path]:
        """Render previews for ``config.train.sample_prompts`` into ``directory``."""
        return []

    def step_metrics(self, step: int, total: int) -> dict[str, float]:
        """Optional: metrics to log with this step's (an eval loss every few steps ...).

        Called on every process after each optimizer step; a step that returns metrics is
        logged even between ``logging_steps``.
        """
        return {}

    def dataset_fingerprint(self) -> str:
        """A short hash of the training data, recorded in run.json."""
        return ""

    def export_metadata(self) -> dict[str, str]:
        """Backend-specific metadata to add to exported files."""
        return {}

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained LoRA tensors (default: every trainable parameter, by name)."""
        return trainable_state_dict(self.trainable_module())

    def adapter_export(self, step: int) -> AdapterExport:
        """What exporters receive after ``step`` optimizer steps (see
        :class:`lorakit.export_view.AdapterExport`). The default: the trainable tensors of
        :meth:`lora_state_dict` and the core's LoRA keys; backends add what they know."""
        from lorakit.export_view import AdapterExport, Network

        t = self.config.train
        return AdapterExport(
            backend=self.config.backend or "",
            network=Network(rank=t.lora_rank, alpha=t.alpha, dropout=t.lora_dropout),
            state_dict=self.lora_state_dict,
            base_model=t.base_model,
            started_at=self.started_at,
            metadata=self.export_metadata(),
        )

    def teardown(self) -> None:  # noqa: B027
        """Free models and caches."""


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (the LoRA tensors), by their names in ``module``."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def half_dtype() -> torch.dtype:
    """The 16-bit dtype for a GPU: bfloat16 where it is supported, else float16."""
    import torch

    cuda = torch.cuda.is_available()
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
