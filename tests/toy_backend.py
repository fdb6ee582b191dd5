"""A tiny backend for engine tests: LoRA (through peft) on a frozen random MLP.

It learns to imitate a fixed random "teacher" MLP, so the loss can fall; it needs neither
diffusers nor transformers, which proves the engine is backend-agnostic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from lorakit.api import Backend, BackendPlugin, LossOutput, ModelLoaderSpec, hookimpl

LORAKIT_PLUGIN_API = 1


def _fsdp_on_cpu() -> None:
    """Test-only: accelerate turns FSDP on only when it sees a GPU-type device, and silently
    trains unsharded, unsynchronised copies on CPU. With LORAKIT_TEST_FSDP_CPU set, its
    backend set-up answers "gloo, multi-device" so FSDP2 really shards over two CPU processes
    (the device itself comes from ACCELERATE_TORCH_DEVICE=cpu)."""
    import os

    if not os.environ.get("LORAKIT_TEST_FSDP_CPU") or os.environ.get("LOCAL_RANK") is None:
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    PartialState._prepare_backend = lambda self, *a, **k: ("gloo", DistributedType.MULTI_GPU)


_fsdp_on_cpu()


class ToySection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: int = 64
    dim: int = 16
    hidden: int = 32
    slow_ms: float = 0.0  # sleep per step, to give kill tests a window
    head_lr: float | None = None  # the output layer's LoRA in its own parameter group
    metadata_path: str | None = None  # the seed's top-level key, declared as an alias

    @field_validator("metadata_path")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and (info.context or {}).get("check_paths", True) and not Path(value).is_file():
            raise ValueError("file not found")
        return value

    oom_above: int | None = None  # raise torch.OutOfMemoryError for larger micro-batches


class ToyDataset:
    def __init__(self, n: int, dim: int, seed: int = 0) -> None:
        import torch

        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)
        teacher = torch.nn.Sequential(
            torch.nn.Linear(dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)
        )
        torch.manual_seed(99)
        for p in teacher.parameters():
            torch.nn.init.normal_(p, std=0.7, generator=g)
        with torch.no_grad():
            self.y = teacher(self.x)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i]}


def random_mlp(source: str, *, dim: int, hidden: int) -> Any:
    """The toy "base model": a frozen MLP with seeded random weights."""
    import torch

    g = torch.Generator().manual_seed(7)
    base = torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)
    )
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return base


class ToyBackend(Backend):
    default_export_formats = ("safetensors",)

    def setup(self, ctx: Any) -> None:
        from peft import LoraConfig, get_peft_model

        section = self.config.section
        t = self.config.train
        loader = ctx.registries.model_loader_for("toy", t.base_model, t.model_loader)
        base = loader.load(t.base_model, dim=section.dim, hidden=section.hidden)
        lora = LoraConfig(
            r=t.lora_rank,
            lora_alpha=t.alpha,
            lora_dropout=t.lora_dropout,
            target_modules=t.target_modules or ["0", "2"],
        )
        self.model = get_peft_model(base, lora)
        self.slow = section.slow_ms / 1000

    def trainable_module(self) -> Any:
        return self.model

    def optimizer_param_groups(self, learning_rate: float) -> Any:
        head_lr = self.config.section.head_lr
        if head_lr is None:
            return None
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        body = [p for n, p in named if ".2." not in n]
        head = [p for n, p in named if ".2." in n]
        return [{"params": body, "lr": learning_rate}, {"params": head, "lr": head_lr}]

    def dataset(self, ctx: Any) -> Any:
        return ToyDataset(self.config.section.samples, self.config.section.dim)

    def loss(self, module: Any, batch: Any) -> LossOutput:
        import time

        import torch

        if self.slow:
            time.sleep(self.slow)
        limit = self.config.section.oom_above
        if limit is not None and len(batch["x"]) > limit:
            raise torch.OutOfMemoryError(f"toy: a micro-batch of {len(batch['x'])} > {limit}")
        pred = module(batch["x"])
        per_sample = torch.nn.functional.mse_loss(pred, batch["y"], reduction="none").mean(dim=1)
        return LossOutput(per_sample.sum(), samples=len(per_sample))

    def dataset_fingerprint(self) -> str:
        return "toy"


class Toy(BackendPlugin):
    name = "toy"
    task_types = ("toy-regression",)
    description = "LoRA on a tiny MLP (tests)"
    config_model = ToySection
    aliases = {"metadata_path": "metadata_path"}

    def create(self, config: Any) -> Backend:
        return ToyBackend(config)


@hookimpl
def register_backends(register: Any) -> None:
    register(Toy())


@hookimpl
def register_model_loaders(register: Any) -> None:
    register(
        ModelLoaderSpec(
            "toy-random",
            "toy",
            lambda source: source.startswith("toy/"),
            random_mlp,
            "a seeded random MLP for toy/<name> (tests)",
        )
    )


@hookimpl
def on_train_end(run: Any, outputs: list[str]) -> None:
    """With LORAKIT_TEST_DUMP_RANKS set, every process saves its LoRA (multi-process tests)."""
    import os

    if not os.environ.get("LORAKIT_TEST_DUMP_RANKS"):
        return
    from safetensors.torch import save_file

    rank = int(os.environ.get("RANK", "0"))
    weights = {k: v.contiguous() for k, v in run.backend.lora_state_dict().items()}
    save_file(weights, str(run.output_dir / f"rank{rank}.safetensors"))
    (run.output_dir / f"rank{rank}.json").write_text(str(run.num_processes))


def _local_numel(param: Any) -> int:
    """Elements this process holds: a ZeRO-3 shard, a DTensor's local part, or all."""
    if hasattr(param, "ds_tensor"):
        return int(param.ds_tensor.numel())
    if hasattr(param, "to_local"):
        return int(param.to_local().numel())
    return int(param.numel())


@hookimpl
def on_train_start(run: Any) -> None:
    """With LORAKIT_TEST_DUMP_RANKS set, every process records how much of the LoRA it holds
    (sharding tests) and the losses it logs."""
    import json
    import os

    if not os.environ.get("LORAKIT_TEST_DUMP_RANKS"):
        return
    rank = int(os.environ.get("RANK", "0"))
    params = [p for p in run.backend.model.parameters() if p.requires_grad]
    full = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    local = sum(_local_numel(p) for p in params)
    shard = {"local": local, "full": full}
    run.output_dir.mkdir(parents=True, exist_ok=True)
    (run.output_dir / f"rank{rank}.shard.json").write_text(json.dumps(shard))


@hookimpl
def on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    import os

    if os.environ.get("LORAKIT_TEST_DUMP_RANKS"):
        rank = int(os.environ.get("RANK", "0"))
        with open(run.output_dir / f"rank{rank}.losses", "a") as f:
            f.write(f"{metrics['loss']!r}\n")
        import torch

        with open(run.output_dir / f"rank{rank}.noise", "a") as f:  # this rank's next draw
            f.write(f"{step} {torch.rand(()).item()!r}\n")
