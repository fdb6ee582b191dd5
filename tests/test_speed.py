"""Core speed options change nothing but speed (issue 29, item 2): AdamW's foreach and fused
kernels against torch's for-loop AdamW; TF32's choice and the header's words."""

from __future__ import annotations

import pytest


def _steps(**kernel: bool) -> list[object]:
    import torch

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in ((8, 4), (4,), (3, 3, 2, 2))]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **kernel)
    for step in range(5):
        for i, p in enumerate(params):
            p.grad = torch.sin(p.detach() * (step + 1) + i)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("kernel", [{"foreach": True}, {"fused": True}])
def test_adamw_kernels_equal_the_for_loop(kernel: dict[str, bool]) -> None:
    import torch

    reference = _steps(foreach=False)
    for got, want in zip(_steps(**kernel), reference, strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)


def test_adamw_picks_foreach_on_cpu_and_keeps_the_users_choice() -> None:
    import torch

    from lorakit.builtins.optimizers import adamw

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert adamw(p, lr=1e-3).defaults["foreach"] is True
    chosen = adamw([{"params": p}], lr=1e-3, foreach=False)
    assert chosen.defaults["foreach"] is False and not chosen.defaults["fused"]


def test_tf32_choice_and_header() -> None:
    import torch

    from lorakit.engine.speed import apply_tf32, tf32_header, tf32_wanted

    assert tf32_wanted(None, (8, 0)) and tf32_wanted(None, (9, 0))
    assert not tf32_wanted(None, (7, 5)) and not tf32_wanted(None, None)
    assert not tf32_wanted(False, (9, 0)) and tf32_wanted(True, (7, 0))
    assert not tf32_wanted(True, None)  # no CUDA device: nothing to turn on
    before = torch.backends.cuda.matmul.allow_tf32
    assert apply_tf32(None, torch.device("cpu")) is False
    assert torch.backends.cuda.matmul.allow_tf32 == before  # a CPU run touches nothing
    assert tf32_header(False) == "" and "TF32" in tf32_header(True)
