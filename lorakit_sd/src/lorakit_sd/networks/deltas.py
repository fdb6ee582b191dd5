"""Reading LoHa / LoKr / DoRA files back: each module's tensors checked, and its weight update
computed by its type's module (``loha.delta``, ``lokr.delta``, ``dora.delta``) as the readers
compute it.

Scales follow LyCORIS's readers (and ComfyUI's and A1111's): LoHa ``alpha / rank`` with the
rank of ``hada_w1_b``; LoKr ``alpha / rank`` with the rank of a ``_b`` factor, ``1`` when
neither factor is decomposed; a missing ``alpha`` means ``alpha = rank``. The products
themselves are PEFT's functions (``make_weight``, ``make_weight_cp``, ``make_kron``).
DoRA (``dora_scale`` beside ``lora_down``/``lora_up``) rescales every output row of
``W + ΔW`` to ``dora_scale``; a weight below 1 moves that far from ``W`` towards it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError
from lorakit_sd.networks import file_network, network_module
from lorakit_sd.networks.loha import NAMES as LOHA
from lorakit_sd.networks.lokr import NAMES as LOKR

LYCORIS_SUFFIXES = frozenset((*LOHA, *LOKR, "dora_scale"))
_NEEDS = {
    "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},),
    "lokr": ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"}),
}


def check_entry(path: Path, stem: str, entry: dict[str, Any]) -> None:
    """Refuse an incomplete LoHa / LoKr / DoRA module; set the entry's ``alpha``."""
    tensors = entry["tensors"]
    network = file_network(f"x.{k}" for k in tensors)
    if network == "dora":
        if "down" not in entry or "up" not in entry:
            raise UsageError(f"{path}: {stem} has dora_scale but no lora_down / lora_up")
        rank = int(entry["down"].shape[0])
    else:
        if "down" in entry or "up" in entry:
            raise UsageError(f"{path}: {stem} mixes lora_down/lora_up with {network} tensors")
        first = any(need <= tensors.keys() for need in _NEEDS[network])
        second = "lokr_w2" in tensors or {"lokr_w2_a", "lokr_w2_b"} <= tensors.keys()
        if not first or (network == "lokr" and not second):
            raise UsageError(f"{path}: {stem} lacks some of its {network} tensors")
        rank = network_module(network).rank(tensors) or 1
    entry["alpha"] = float(entry["alpha"]) if "alpha" in entry else float(rank)


def network_delta(module: Any, weight: float, base: Any) -> Any:
    """A LoHa / LoKr / DoRA module's update times ``weight``, shaped ``[out, -1]``: each
    type's own ``delta`` (its module in :mod:`lorakit_sd.networks`)."""
    network = file_network(f"x.{k}" for k in module.tensors)
    return network_module(network).delta(module, base) * weight
