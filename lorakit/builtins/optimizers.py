"""Built-in optimizers: adamw, adamw8bit, dadapt_adam, prodigy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorakit import hookimpl
from lorakit.errors import UsageError
from lorakit.registry import OptimizerSpec


def adamw(params: Any, lr: float, **args: Any) -> Any:
    """torch AdamW with its fastest kernel: fused on CUDA, foreach (one kernel per
    operation for all tensors) elsewhere; ``optimizer_args`` ``fused`` / ``foreach`` win."""
    import torch

    params = list(params)
    if "fused" not in args and "foreach" not in args:
        args.update(adamw_kernel(params))
    return torch.optim.AdamW(params, lr=lr, **args)


def adamw_kernel(params: list[Any]) -> dict[str, bool]:
    """``{"fused": True}`` when every tensor is a floating CUDA tensor, else foreach."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    cuda = bool(tensors) and all(t.is_cuda and t.is_floating_point() for t in tensors)
    return {"fused": True} if cuda else {"foreach": True}


def adamw8bit(params: Any, lr: float, **args: Any) -> Any:
    """bitsandbytes' 8-bit AdamW. It runs on the CPU too (checked with 0.50.2): tensors of 4096
    values or more keep uint8 moments, smaller ones float32 ones (its ``min_8bit_size``)."""
    return _need("bitsandbytes", BNB_INSTALL).optim.AdamW8bit(params, lr=lr, **args)


BNB_INSTALL = "pip install 'lorakit[bnb]'"


def _need(module: str, install: str) -> Any:
    """The module; the config check (``OptimizerSpec.requires``) normally refused earlier."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"this optimizer needs {module}: {install}") from None


def dadapt_adam(params: Any, lr: float, **args: Any) -> Any:
    return _need("dadaptation", "pip install dadaptation").DAdaptAdam(params, lr=lr, **args)


def prodigy(params: Any, lr: float, **args: Any) -> Any:
    return _need("prodigyopt", "pip install prodigyopt").Prodigy(params, lr=lr, **args)


@hookimpl
def register_optimizers(register: Callable[[OptimizerSpec], None]) -> None:
    register(OptimizerSpec("adamw", adamw, "torch AdamW (decoupled weight decay)"))
    register(
        OptimizerSpec(
            "adamw8bit",
            adamw8bit,
            "bitsandbytes 8-bit AdamW (GPU or CPU)",
            requires="bitsandbytes",
            install=BNB_INSTALL,
        )
    )
    register(
        OptimizerSpec(
            "dadapt_adam",
            dadapt_adam,
            "D-Adaptation Adam: learns its step size (lr≈1.0)",
            adaptive=True,
            requires="dadaptation",
            install="pip install 'lorakit[adaptive]'",
        )
    )
    register(
        OptimizerSpec(
            "prodigy",
            prodigy,
            "Prodigy: learns its step size (lr≈1.0)",
            adaptive=True,
            requires="prodigyopt",
            install="pip install 'lorakit[adaptive]'",
        )
    )


def effective_lr(optimizer: Any) -> float:
    """The step size an optimizer applies: ``d * lr`` for D-Adaptation/Prodigy, else lr."""
    group = optimizer.param_groups[0]
    return float(group.get("d", 1.0)) * float(group["lr"])
