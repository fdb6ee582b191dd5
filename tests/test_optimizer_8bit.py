"""``optimizer: adamw8bit`` trains on the CPU (issue 24): bitsandbytes' own AdamW8bit is the
judge of every step, and a missing bitsandbytes is refused before anything loads."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import toy_config

from lorakit.cli import main
from lorakit.config import load_config
from lorakit.engine import train
from lorakit.errors import ConfigError

LR = 1e-2
STEPS = 3


def test_adamw8bit_trains_on_cpu_as_bitsandbytes_steps_it(toy_plugins, tmp_path):
    """Every optimizer step of a real run, seen through torch's global optimizer hooks
    (parameters and clipped gradients going in, parameters and state coming out), replayed
    on fresh tensors by bitsandbytes' AdamW8bit: the same LoRA after each step, and uint8
    moments for the LoRA tensor of 4096 values (bitsandbytes' ``min_8bit_size``)."""
    import bitsandbytes as bnb
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    before: list[list[torch.Tensor]] = []
    grads: list[list[torch.Tensor]] = []
    after: list[list[torch.Tensor]] = []
    states: list[dict[str, torch.dtype]] = []
    kinds: list[str] = []

    def params_of(optimizer):
        return [p for group in optimizer.param_groups for p in group["params"]]

    def pre(optimizer, args, kwargs):
        kinds.append(type(optimizer).__module__ + "." + type(optimizer).__name__)
        before.append([p.detach().clone() for p in params_of(optimizer)])
        grads.append([p.grad.detach().clone() for p in params_of(optimizer)])

    def post(optimizer, args, kwargs):
        after.append([p.detach().clone() for p in params_of(optimizer)])
        big = [p for p in params_of(optimizer) if p.numel() >= 4096]
        states.append({k: v.dtype for k, v in optimizer.state[big[0]].items() if k != "step"})

    hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        # x of 1024 features: the first layer's lora_A is [4, 1024] = 4096 values
        data = toy_config(tmp_path, optimizer="adamw8bit", learning_rate=LR, max_steps=STEPS)
        data["toy"]["dim"] = 1024
        cfg = load_config(data=data, registries=toy_plugins.registries)
        result = train(cfg, plugins=toy_plugins, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert result.steps == STEPS and len(before) == STEPS
    assert set(kinds) == {"bitsandbytes.optim.adamw.AdamW8bit"}
    shapes = [tuple(p.shape) for p in before[0]]
    assert (4, 1024) in shapes and all(p.numel() < 4096 for p in before[0] if p.shape != (4, 1024))
    assert states[-1]["state1"] == torch.uint8 and states[-1]["state2"] == torch.uint8

    reference = [p.clone().requires_grad_(True) for p in before[0]]
    judge = bnb.optim.AdamW8bit(reference, lr=LR)
    moved = False
    for step in range(STEPS):
        for p, g in zip(reference, grads[step], strict=True):
            p.grad = g.clone()
        judge.step()
        for ours, theirs in zip(after[step], reference, strict=True):
            torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=0)
        moved |= any(not torch.equal(a, b) for a, b in zip(after[step], before[step], strict=True))
        if step + 1 < STEPS:  # the next step starts where this one ended
            for a, b in zip(before[step + 1], after[step], strict=True):
                assert torch.equal(a, b)
    assert moved
    [big] = [p for p in reference if p.numel() >= 4096]
    assert judge.state[big]["state1"].dtype == torch.uint8  # the judge's state is 8-bit too


def test_missing_bitsandbytes_is_refused_before_loading(toy_plugins, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, not findable
    data = toy_config(tmp_path, optimizer="adamw8bit")
    with pytest.raises(ConfigError, match="adamw8bit needs bitsandbytes") as info:
        load_config(data=data, registries=toy_plugins.registries, check_paths=False)
    assert info.value.key == "optimizer" and "pip install 'lorakit[bnb]'" in str(info.value)

    import toy_backend

    loads: list[str] = []
    monkeypatch.setattr(toy_backend.ToyBackend, "setup", lambda self, ctx: loads.append("setup"))
    config = tmp_path / "run.yaml"
    config.write_text(
        "task_type: toy-regression\nbase_model: toy/mlp\n"
        f"train_data_dir: {tmp_path}\noutput_dir: {tmp_path / 'run'}\noptimizer: adamw8bit\n"
    )
    for command in (["config", "validate", str(config)], ["train", "--config", str(config)]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--no-progress"] if command[0] == "train" else command)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exit_info.value.code == 2 and len(err) == 1, err
        assert f"{config}:5: optimizer:" in err[0] and "adamw8bit needs bitsandbytes" in err[0]
    assert loads == [] and not (tmp_path / "run").exists()
