"""The ``distributed:`` config section on accelerate, and what each strategy needs from the
engine: whole tensors to save (gathered from the shards on every rank), the optimizer
state through the strategy's own format, and clipping by the global norm.

lorakit adds no distributed machinery: DDP, DeepSpeed ZeRO-2/3 and FSDP2 are accelerate's
and torch's; this module only routes the engine's few strategy-dependent calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import RunError, UsageError

#: Test-only: lets FSDP run on CPU processes (the tests' shim makes accelerate shard there).
FSDP_CPU_TEST_FLAG = "LORAKIT_TEST_FSDP_CPU"


def check_strategy(config: Any, cuda: bool) -> None:
    """Refuse, before anything launches or loads, what this machine cannot run."""
    import os

    strategy = config.train.distributed.strategy
    if strategy == "fsdp" and not cuda and not os.environ.get(FSDP_CPU_TEST_FLAG):
        raise UsageError(
            "distributed.strategy fsdp needs CUDA devices and this machine has none; "
            "deepspeed_zero3 shards the model on CPU processes too"
        )


def accelerator_kwargs(config: Any) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator`` from ``config.train.distributed``."""
    import torch

    dist = config.train.distributed
    check_strategy(config, torch.cuda.is_available())
    kwargs: dict[str, Any] = {}
    if dist.strategy == "ddp":
        kwargs["cpu"] = not torch.cuda.is_available()
        if dist.find_unused_parameters:
            from accelerate.utils import DistributedDataParallelKwargs

            kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    elif dist.strategy.startswith("deepspeed"):
        from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

        if importlib.util.find_spec("deepspeed") is None:
            raise UsageError(
                f"distributed.strategy {dist.strategy} needs DeepSpeed: "
                "pip install 'lorakit[deepspeed]'"
            )
        stage = 3 if dist.strategy.endswith("zero3") else 2
        plugin = DeepSpeedPlugin(
            zero_stage=stage,
            # lorakit accumulates itself and marks the window's last micro-batch (see step.py)
            gradient_accumulation_steps=config.train.gradient_accumulation_steps,
            gradient_clipping=config.train.max_grad_norm or 0.0,
            offload_optimizer_device="cpu" if dist.offload else "none",
            offload_param_device="cpu" if dist.offload and stage == 3 else "none",
            zero3_init_flag=False,
            zero3_save_16bit_model=stage == 3,
        )
        zero = plugin.deepspeed_config["zero_optimization"]
        if stage == 3:
            # Shard every tensor, however small (LoRA tensors are): the default keeps
            # tensors under 100k elements whole on every rank.
            zero["stage3_param_persistence_threshold"] = 0
        if dist.offload:
            # The optimizer is lorakit's (torch) one, not DeepSpeed's CPU Adam.
            plugin.deepspeed_config["zero_force_ds_cpu_optimizer"] = False
        # Backends with their own batch sampler (buckets, length groups) leave the
        # DataLoader's batch_size unset; DeepSpeed needs the micro-batch size stated.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train.batch_size
        kwargs["deepspeed_plugin"] = plugin
        # The same window size accelerate-side, so it does not warn about a mismatch.
        kwargs["gradient_accumulation_steps"] = config.train.gradient_accumulation_steps
        if not torch.cuda.is_available():
            # On CPU, DeepSpeed needs gloo named, or every rank believes it is rank 0.
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
            _skip_shm_build()
    elif dist.strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            cpu_offload=dist.offload,
            cpu_ram_efficient_loading=False,
            reshard_after_forward=True,
        )
    return kwargs


def _skip_shm_build() -> None:
    """DeepSpeed's CPU accelerator compiles a shared-memory all-reduce (a minute of g++) on
    first use; gloo does the same job for CPU runs."""
    with contextlib.suppress(Exception):
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@dataclass
class Strategy:
    """How the prepared module holds its parameters: ``ddp`` (whole on every rank),
    ``deepspeed`` (ZeRO stage 2 or 3) or ``fsdp`` (FSDP2, DTensor shards)."""

    kind: str
    accelerator: Any
    module: Any
    stage: int = 0

    @classmethod
    def of(cls, accelerator: Any, module: Any, wanted: str = "ddp") -> Strategy:
        """The strategy accelerate actually set up; refused when it is not the one the
        config asks for, or when the launched processes did not form one group (both
        would otherwise train unsynchronised copies and exit 0)."""
        import os

        from accelerate.utils import DistributedType

        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if accelerator.num_processes != launched:
            raise RunError(
                f"{launched} processes were launched but each sees {accelerator.num_processes}: "
                f"they did not form one process group"
            )
        kind = accelerator.distributed_type
        if launched > 1 and wanted != "ddp":
            expected = DistributedType.FSDP if wanted == "fsdp" else DistributedType.DEEPSPEED
            if kind != expected:
                hint = " (accelerate runs FSDP on GPUs only)" if wanted == "fsdp" else ""
                raise UsageError(
                    f"distributed.strategy {wanted}: accelerate set up {kind.value} instead{hint}"
                )
        if kind == DistributedType.DEEPSPEED:
            stage = accelerator.state.deepspeed_plugin.zero_stage
            return cls("deepspeed", accelerator, module, stage)
        if kind == DistributedType.FSDP:
            if not accelerator.is_fsdp2:
                raise UsageError("distributed.strategy fsdp: lorakit supports FSDP version 2 only")
            return cls("fsdp", accelerator, module)
        return cls("ddp", accelerator, module)

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.module)

    def trainable(self) -> dict[str, Any]:
        return {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """While inside, every rank's module holds whole LoRA tensors (enter on all ranks).

        ZeRO-3 gathers the trainable tensors; FSDP2 unshards its modules (all of their
        tensors, frozen ones too). Read-only: changes made inside are not kept.
        """
        if self.kind == "deepspeed" and self.stage == 3:
            from lorakit.zero import gathered_parameters

            with gathered_parameters(list(self.trainable().values())):
                yield
        elif self.kind == "fsdp":
            from torch.distributed.fsdp import FSDPModule

            shards = [m for m in self.unwrapped.modules() if isinstance(m, FSDPModule)]
            for m in shards:
                m.unshard()
            try:
                yield
            finally:
                for m in shards:
                    m.reshard()
        else:
            yield

    def lora_state_dict(self) -> dict[str, Any]:
        """The whole trainable tensors by name, on every rank (call on all ranks)."""
        with self.gathered():
            return {n: p.detach().clone().cpu() for n, p in self.trainable().items()}

    def load_lora(self, tensors: dict[str, Any], where: Path) -> None:
        """Copy whole tensors (read by every rank) into the possibly sharded parameters."""
        import torch

        params = self.trainable()
        missing = sorted(set(params) - set(tensors))
        unexpected = sorted(set(tensors) - set(params))
        if missing or unexpected:
            names = ", ".join((missing or unexpected)[:3])
            raise UsageError(
                f"checkpoint {where} does not fit this model (tensors differ: {names})"
            )
        from lorakit.zero import gathered_parameters

        with gathered_parameters(list(params.values()), modifier_rank=0), torch.no_grad():
            for name, param in params.items():
                value = tensors[name]
                if tuple(_full_shape(param)) != tuple(value.shape):
                    raise UsageError(
                        f"checkpoint {where}: {name} has shape {tuple(value.shape)}, "
                        f"the model expects {tuple(_full_shape(param))}"
                    )
                if self.kind == "fsdp":
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(
                        value.to(param.dtype), param.device_mesh, param.placements
                    )
                param.copy_(value)

    def close(self) -> None:
        """Take the strategy's engine down while the process group still exists (on every
        rank, before ``accelerator.end_training()`` destroys the group).

        DeepSpeed's engine otherwise tears itself down in ``__del__`` at interpreter exit,
        after the group is gone: removing ZeRO-3's hooks and buffers then talks to a
        destroyed group. DeepSpeed's own order is ``engine.destroy()``, then
        ``destroy_process_group()``.
        """
        if self.kind == "deepspeed":
            self.accelerator.free_memory()  # engine.destroy(), then accelerate's references

    def clip_parameters(self) -> list[Any]:
        """What to give ``clip_grad_norm_`` so the norm is the global one."""
        return list(self.module.parameters())

    # -- optimizer state -------------------------------------------------------------

    def optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        """A whole, torch-format optimizer state dict (on the main process), or None when
        the strategy saves its own (DeepSpeed, see ``save_optimizer``)."""
        if self.kind == "deepspeed":
            return None
        if self.kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            return get_optimizer_state_dict(
                self.unwrapped,
                optimizer.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        return dict(optimizer.state_dict())

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        if self.kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                self.unwrapped,
                optimizer.optimizer,
                state,
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            optimizer.load_state_dict(state)

    def save_optimizer(self, folder: Path) -> None:
        """DeepSpeed: every rank writes its optimizer partition into ``folder`` (torch
        pickles: DeepSpeed has no other format). Call on all ranks."""
        self.module.save_checkpoint(str(folder), tag="zero", exclude_frozen_parameters=True)

    def load_optimizer(self, folder: Path) -> None:
        self.module.load_checkpoint(
            str(folder),
            tag="zero",
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )


def _full_shape(param: Any) -> Any:
    """A parameter's whole shape: ZeRO-3 keeps it in ``ds_shape``, a DTensor in ``shape``."""
    return getattr(param, "ds_shape", param.shape)
