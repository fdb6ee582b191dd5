"""Reading LoHa / LoKr / DoRA files back: each module's weight update, as the readers compute it.

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
from lorakit_sd.networks import file_network
from lorakit_sd.networks.loha import NAMES as LOHA
from lorakit_sd.networks.lokr import NAMES as LOKR

LYCORIS_SUFFIXES = frozenset((*LOHA, *LOKR, "dora_scale"))
_NEEDS = {
    "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},),
    "lokr": ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"}),
}


def _rank(tensors: dict[str, Any], network: str) -> int | None:
    if network == "loha":
        return int(tensors["hada_w1_b"].shape[0])
    factor = tensors.get("lokr_w1_b", tensors.get("lokr_w2_b"))
    return int(factor.shape[0]) if factor is not None else None


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
        rank = _rank(tensors, network) or 1
    entry["alpha"] = float(entry["alpha"]) if "alpha" in entry else float(rank)


def _loha(t: dict[str, Any], alpha: float) -> Any:
    from peft.tuners.loha.layer import make_weight, make_weight_cp

    scale = alpha / t["hada_w1_b"].shape[0]
    w = [t[n].float() for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
    if "hada_t1" in t:
        return make_weight_cp(t["hada_t1"].float(), w[0], w[1], t["hada_t2"].float(), w[2], w[3],
                              scale=scale)  # fmt: skip
    return make_weight(*w, scale=scale)


def _lokr(t: dict[str, Any], alpha: float) -> Any:
    from peft.tuners.lokr.layer import make_kron, make_weight_cp

    rank = _rank(t, "lokr")
    scale = alpha / rank if rank else 1.0
    w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    elif "lokr_t2" in t:
        w2 = make_weight_cp(t["lokr_t2"].float(), t["lokr_w2_a"].float(), t["lokr_w2_b"].float())
    else:
        w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
    return make_kron(w1, w2, scale)


def network_delta(module: Any, weight: float, base: Any) -> Any:
    """A LoHa / LoKr / DoRA module's update times ``weight``, shaped ``[out, -1]``."""
    t = module.tensors
    network = file_network(f"x.{k}" for k in t)
    if network == "loha":
        return (_loha(t, module.alpha) * weight).flatten(1)
    if network == "lokr":
        delta = _lokr(t, module.alpha)
        return (delta * weight).reshape(delta.shape[0], -1)
    if base is None:
        raise ValueError("a DoRA update depends on the base weight")
    w = base.float().flatten(1)
    lora = (module.up.float().flatten(1) @ module.down.float().flatten(1)) * (
        module.alpha / module.down.shape[0]
    )
    merged = w + lora
    scale = t["dora_scale"].float().reshape(-1, 1) / merged.norm(dim=1, keepdim=True)
    return (merged * scale - w) * weight
