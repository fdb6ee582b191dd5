"""Whole tensors from a model that DeepSpeed ZeRO-3 has partitioned.

Under ZeRO-3 every process holds only a slice of each parameter (``param.data`` is a
``(0,)`` tensor, the slice is ``param.ds_tensor``). Its forward hooks gather what a layer
needs, but only inside the DeepSpeed engine's own forward and only when every process runs
it. Anything else that reads weights (a probe before training, previews, exporters) runs
inside :func:`gathered_parameters`, entered on every process.

transformers loads a model already partitioned (``deepspeed.zero.Init``) when the run's
strategy is ZeRO-3, so this applies before ``prepare`` too. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any


def partitioned(params: Iterable[Any]) -> list[Any]:
    """The parameters ZeRO-3 has partitioned (DeepSpeed marks them with ``ds_id``)."""
    return [p for p in params if hasattr(p, "ds_id")]


def _parameters(module_or_params: Any) -> list[Any]:
    if hasattr(module_or_params, "parameters"):
        return list(module_or_params.parameters())
    return list(module_or_params)


@contextlib.contextmanager
def gathered_parameters(
    module_or_params: Any, *, modifier_rank: int | None = None
) -> Iterator[None]:
    """While inside, the module (or parameter list) holds whole tensors on every process.

    A no-op unless ZeRO-3 partitioned some of them. Enter it on every process (it is a
    collective). ``modifier_rank``: the process whose changes made inside are kept (scattered
    to the others on exit); ``None``: read-only.
    """
    params = partitioned(_parameters(module_or_params))
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


@contextlib.contextmanager
def loading_whole() -> Iterator[None]:
    """While inside, transformers loads models whole, also in a ZeRO-3 run.

    Under ZeRO-3, accelerate registers the run's DeepSpeed config with transformers, whose
    ``from_pretrained`` then builds every model inside ``deepspeed.zero.Init`` (partitioned
    from the start). Frozen models used outside the trained module (a text encoder whose
    outputs are cached, a VAE) never get DeepSpeed's gather hooks, so they must load whole;
    what ends up inside the prepared module is partitioned by ``prepare`` anyway. A no-op
    outside ZeRO-3. Imports accelerate and transformers only in a ZeRO-3 run.
    """
    import sys

    if "accelerate" not in sys.modules:
        yield
        return
    from accelerate.state import AcceleratorState, is_initialized

    plugin = AcceleratorState().deepspeed_plugin if is_initialized() else None
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
