"""``lokr``: PEFT's LoKr (Kronecker product), LyCORIS's keys.

``ΔW = kron(w1, w2) · scale`` where ``w1`` is ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``
(``decompose_both``) and ``w2`` is ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b``; with
``sd.use_tucker`` a 3x3 convolution's ``w2`` is CP-decomposed (``lokr_t2 [r, r, kh, kw]``,
``lokr_w2_a [r, out]``, ``lokr_w2_b [r, in]``, LyCORIS's ``use_tucker``). Readers (LyCORIS,
ComfyUI, A1111) take ``scale = alpha / rank`` with the rank read from a ``_b`` factor, and
``scale = 1`` when neither factor is decomposed;
PEFT always scales by ``alpha / r``, so in that case the scale is folded into ``lokr_w2``.
"""

from __future__ import annotations

from typing import Any

NAMES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def peft_config(
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    ranks: dict[str, int],
    alphas: dict[str, float],
    options: Any,
) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(
        r=rank,
        alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; LyCORIS alphas are floats
        module_dropout=dropout,
        target_modules=targets,
        rank_pattern=ranks,
        alpha_pattern=alphas,
        use_effective_conv2d=options.use_tucker,
        decompose_both=options.lokr_decompose_both,
        decompose_factor=options.lokr_factor,
    )


def layer_tensors(layer: Any, adapter: str = "default") -> dict[str, Any]:
    import torch

    out = {n: getattr(layer, n)[adapter].detach() for n in NAMES if adapter in getattr(layer, n)}
    scale = float(layer.scaling[adapter])
    factor = out.get("lokr_w1_b", out.get("lokr_w2_b"))
    if factor is None:  # both factors full: readers apply no scale
        out["lokr_w2"] = out["lokr_w2"] * scale
        out["alpha"] = torch.tensor(1.0)
    else:
        out["alpha"] = torch.tensor(scale * factor.shape[0])
    return out


def rank(tensors: dict[str, Any]) -> int | None:
    """The rank readers scale by (a ``_b`` factor's), None when neither factor is decomposed."""
    factor = tensors.get("lokr_w1_b", tensors.get("lokr_w2_b"))
    return int(factor.shape[0]) if factor is not None else None


def delta(module: Any, base: Any = None) -> Any:
    """``kron(w1, w2) · scale`` (PEFT's ``make_kron``), shaped ``[out, -1]``."""
    from peft.tuners.lokr.layer import make_kron, make_weight_cp

    t = module.tensors
    r = rank(t)
    scale = module.alpha / r if r else 1.0
    w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    elif "lokr_t2" in t:
        w2 = make_weight_cp(t["lokr_t2"].float(), t["lokr_w2_a"].float(), t["lokr_w2_b"].float())
    else:
        w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
    out = make_kron(w1, w2, scale)
    return out.reshape(out.shape[0], -1)
