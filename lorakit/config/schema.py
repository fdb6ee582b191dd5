"""The training config: YAML in, a validated model out, errors that name key and line.

The seed-style flat keys work as written (``learning_rate: 2e-4``, which YAML 1.1 reads as
a string, is a float here). Backends add their own section (``sd:``, ``llm:``) with their
own pydantic model. Relative paths are resolved against the current directory, as
sd-scripts and axolotl do.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorakit.config.migrations import CONFIG_VERSION

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


class DistributedConfig(BaseModel):
    """How to spread training over several processes (see docs/distributed.md)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"] = Field(
        "ddp", description="ddp, deepspeed_zero2, deepspeed_zero3 or fsdp."
    )
    offload: bool = Field(False, description="DeepSpeed/FSDP: offload optimizer state to CPU.")
    find_unused_parameters: bool = Field(False, description="DDP: look for unused parameters.")


class EmaConfig(BaseModel):
    """An exponential moving average of the trained weights, exported in their place."""

    model_config = ConfigDict(extra="forbid")

    decay: float = Field(
        0.999, gt=0.0, lt=1.0, description="d in ema = d * ema + (1 - d) * weights."
    )
    update_every: int = Field(
        1, gt=0, description="Fold the weights in every N optimizer steps (after start_step)."
    )
    start_step: int = Field(
        0, ge=0, description="Until this step the average equals the weights; it averages after."
    )
    device: Literal["cpu", "gpu"] = Field(
        "gpu", description="Where the average lives: gpu (the accelerator's device) or cpu."
    )
    previews: bool = Field(False, description="Render the previews with the averaged weights.")


class TrainConfig(BaseModel):
    """The core training config. Backend sections are validated by their backend."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    config_version: int = Field(CONFIG_VERSION, description="Config layout version.")
    task_type: str | None = Field(
        None,
        description="image-generation or image (backend sd); text-generation or text "
        "(backend llm). Default: the installed backend's, when only one is installed.",
    )
    backend: str | None = Field(None, description="Backend name; overrides task_type.")
    model_loader: str | None = Field(
        None,
        description="Model loader to read base_model with (lorakit plugins lists them); "
        "default: the first that recognises it.",
    )
    base_model: str = Field(
        description="Base model: a local file or folder, a hub id, or (llm) a .gguf file."
    )
    train_data_dir: str = Field(description="Training data: a folder (or, llm, a .jsonl file).")
    init_adapter: str | None = Field(
        None,
        description="(llm) A PEFT adapter folder to start training from (an SFT LoRA); "
        "it must belong to base_model.",
    )
    output_dir: str = Field("./output/lora", description="Where the run writes everything.")
    output_name: str | None = Field(
        None, description="Base name of exported files; default the output_dir's name."
    )
    lora_rank: int = Field(8, gt=0, le=4096, description="LoRA rank r.")
    lora_alpha: float | None = Field(
        None, gt=0, description="LoRA alpha; the update is scaled by alpha/rank. Default: rank."
    )
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, description="Modules to adapt; default chosen by the backend."
    )
    batch_size: int = Field(1, gt=0, description="Samples per step per process.")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches per optimizer step."
    )
    auto_batch_size: bool = Field(
        False,
        description="Out of memory in the first steps: halve batch_size, double "
        "gradient_accumulation_steps (same effective batch and schedule), retry. One process.",
    )
    epochs: int = Field(1, gt=0, description="Passes over the data (unless max_steps).")
    max_steps: int | None = Field(
        None, gt=0, description="Optimizer steps to run; overrides epochs."
    )
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    optimizer: str = Field("adamw", description="adamw, adamw8bit, dadapt_adam, prodigy, ...")
    optimizer_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the optimizer."
    )
    lr_scheduler: str = Field(
        "constant", description="constant, linear, cosine, cosine_with_restarts, ..."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    lr_scheduler_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra scheduler arguments (e.g. num_cycles)."
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip gradients to this norm; null disables clipping."
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else no."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    torch_compile: bool = Field(
        False,
        description="Run the trained module through torch.compile (inductor); the first "
        "steps compile, later ones run faster. Same loss and LoRA as without.",
    )
    torch_compile_backend: str = Field(
        "inductor",
        description="torch.compile's backend when torch_compile is on (inductor, "
        "aot_eager, cudagraphs, ...: torch._dynamo.list_backends()).",
    )
    allow_tf32: bool | None = Field(
        None,
        description="TF32 matmuls and convolutions on CUDA GPUs that have them (compute "
        "capability 8.0+); null: on there, off elsewhere. The run's header says when on.",
    )
    seed: int = Field(42, description="Seed for every random generator.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    save_total_limit: int | None = Field(
        3, gt=0, description="Keep the newest N checkpoints (null: all)."
    )
    logging_steps: int = Field(1, gt=0, description="Log metrics every N steps.")
    trackers: list[str] = Field(
        default_factory=lambda: ["tensorboard", "jsonl"], description="Metric trackers."
    )
    export_formats: list[str] | None = Field(
        None, description="Exporters to run at the end; default chosen by the backend."
    )
    sample_prompts: list[str] = Field(default_factory=list, description="Prompts for previews.")
    sample_every_n_steps: int = Field(
        0, ge=0, description="Render previews every N steps (0: only at the end)."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Multi-process settings."
    )
    ema: EmaConfig | None = Field(
        None,
        description="Exponential moving average of the trained weights (see below), exported "
        "under the run's name, the raw weights with -raw added. null: off; true: defaults.",
    )

    @field_validator("target_modules", "trackers", "export_formats", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("ema", mode="before")
    @classmethod
    def _ema_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("task_type", mode="before")
    @classmethod
    def _task_alias(cls, value: Any) -> Any:
        return TASK_TYPE_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare ``no`` as false: the user wrote the word, not a boolean.
        return "no" if value is False else value

    @field_validator("output_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.strip() or value in {".", ".."} or any(c in value for c in "/\\\0")
        ):
            raise ValueError("must be a file name without a folder (it is written in output_dir)")
        return value

    @field_validator("sample_prompts", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    @property
    def name(self) -> str:
        return self.output_name or Path(self.output_dir).resolve().name


#: What the seed's configs write for task_type, and the name lorakit uses for it.
TASK_TYPE_ALIASES = {"image": "image-generation", "text": "text-generation"}


#: Keys that may change between a run and its resume without changing what it learns.
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "epochs",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "trackers",
        "sample_prompts",
        "sample_every_n_steps",
        "output_dir",
        "output_name",
        "num_workers",
        "export_formats",
        "config_version",
        "mixed_precision",
        "model_loader",
        "auto_batch_size",
        "torch_compile",
        "torch_compile_backend",
        "allow_tf32",
    }
)


@dataclass
class Config:
    """A validated config: the core keys plus the chosen backend's section."""

    train: TrainConfig
    backend: str
    section: BaseModel | None
    path: Path | None = None
    sections: dict[str, BaseModel] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    #: Why this backend runs the config when it names none (``backend sd: base_model is ...``).
    chosen_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self.train.model_dump(mode="json")
        for name, model in self.sections.items():
            data[name] = model.model_dump(mode="json")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def semantic_view(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """``data`` (default: this config) without the keys a resume may change.

        Core keys in :data:`RESUMABLE_KEYS`; in backend sections, keys starting with
        ``sample_`` (previews) and those a section model lists in ``resumable_keys``.
        """
        data = self.to_dict() if data is None else data
        view: dict[str, Any] = {}
        for key, value in data.items():
            if key in RESUMABLE_KEYS or (key == "ema" and value is None):
                continue
            if key == "ema" and isinstance(value, dict):  # where it lives, what previews use
                value = {k: v for k, v in value.items() if k not in ("device", "previews")}
            model = self.sections.get(key)
            if model is not None and isinstance(value, dict):
                extra: frozenset[str] = getattr(type(model), "resumable_keys", frozenset())
                value = {
                    k: v for k, v in value.items() if not k.startswith("sample_") and k not in extra
                }
            view[key] = value
        return view

    def semantic_hash(self) -> str:
        """Hash of everything that changes what a run learns (not max_steps, logging, ...)."""
        blob = json.dumps(self.semantic_view(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
