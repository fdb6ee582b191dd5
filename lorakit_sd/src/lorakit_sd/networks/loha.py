"""``loha``: PEFT's LoHa (Hadamard product of two low-rank products), LyCORIS's keys.

``ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank``; the tensors are written as PEFT holds
them (its layout is LyCORIS's): ``hada_w1_a [out, r]``, ``hada_w1_b [r, in·kh·kw]``, the same
for ``w2``. With ``sd.use_tucker`` a 3x3 convolution is CP-decomposed as LyCORIS's
``use_tucker`` does it: ``hada_t1 [r, r, kh, kw]`` with ``hada_w1_a [r, out]`` and
``hada_w1_b [r, in]`` (the same for ``w2``), PEFT's ``use_effective_conv2d`` layout.
"""

from __future__ import annotations

from typing import Any

NAMES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


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
    from peft import LoHaConfig

    return LoHaConfig(
        r=rank,
        alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; LyCORIS alphas are floats
        module_dropout=dropout,
        target_modules=targets,
        rank_pattern=ranks,
        alpha_pattern=alphas,
        use_effective_conv2d=options.use_tucker,
    )


def layer_tensors(layer: Any, adapter: str = "default") -> dict[str, Any]:
    import torch

    out = {n: getattr(layer, n)[adapter].detach() for n in NAMES if adapter in getattr(layer, n)}
    rank = out["hada_w1_b"].shape[0]
    out["alpha"] = torch.tensor(float(layer.scaling[adapter] * rank))
    return out


def rank(tensors: dict[str, Any]) -> int:
    """The rank readers scale by: ``hada_w1_b``'s."""
    return int(tensors["hada_w1_b"].shape[0])


def delta(module: Any, base: Any = None) -> Any:
    """``(w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank`` (PEFT's ``make_weight``; with a CP
    core ``make_weight_cp``), shaped ``[out, -1]``, as LyCORIS's readers compute it."""
    from peft.tuners.loha.layer import make_weight, make_weight_cp

    t = module.tensors
    scale = module.alpha / rank(t)
    w1a, w1b, w2a, w2b = (t[n].float() for n in NAMES[:4])
    if "hada_t1" in t:
        core = (t["hada_t1"].float(), w1a, w1b, t["hada_t2"].float(), w2a, w2b)
        return make_weight_cp(*core, scale=scale).flatten(1)
    return make_weight(w1a, w1b, w2a, w2b, scale=scale).flatten(1)
