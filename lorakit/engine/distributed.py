"""The ``distributed:`` config section mapped onto accelerate's plugins."""

from __future__ import annotations

from typing import Any

from lorakit.errors import UsageError


def accelerator_kwargs(config: Any) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator`` from ``config.train.distributed``."""
    dist = config.train.distributed
    kwargs: dict[str, Any] = {}
    if dist.strategy == "ddp":
        if dist.find_unused_parameters:
            from accelerate.utils import DistributedDataParallelKwargs

            kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    elif dist.strategy.startswith("deepspeed"):
        import importlib.util

        from accelerate.utils import DeepSpeedPlugin

        if importlib.util.find_spec("deepspeed") is None:
            raise UsageError(
                f"distributed.strategy {dist.strategy} needs DeepSpeed: pip install deepspeed"
            )

        if config.train.gradient_accumulation_steps > 1:
            # lorakit normalises the loss over the accumulation window itself; DeepSpeed's own
            # accumulation would step and rescale per micro-batch. Not supported together yet.
            raise UsageError(
                f"distributed.strategy {dist.strategy} with gradient_accumulation_steps > 1 is not "
                "supported yet: raise batch_size or use ddp/fsdp"
            )
        stage = 3 if dist.strategy.endswith("zero3") else 2
        plugin = DeepSpeedPlugin(
            zero_stage=stage,
            gradient_accumulation_steps=1,
            gradient_clipping=config.train.max_grad_norm or 0.0,
            offload_optimizer_device="cpu" if dist.offload else "none",
            offload_param_device="cpu" if dist.offload and stage == 3 else "none",
            zero3_init_flag=False,
        )
        # Backends with their own batch sampler (buckets, length groups) leave the
        # DataLoader's batch_size unset; DeepSpeed needs the micro-batch size stated.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train.batch_size
        kwargs["deepspeed_plugin"] = plugin
    elif dist.strategy == "fsdp":
        import torch
        from accelerate.utils import FullyShardedDataParallelPlugin

        # use_orig_params: LoRA mixes frozen and trainable tensors in one flat parameter.
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            use_orig_params=True,
            cpu_offload=dist.offload,
            sync_module_states=torch.cuda.is_available(),
        )
    return kwargs
