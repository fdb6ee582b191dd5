"""sd.text_encoder_lr gives the text-encoder LoRA its own optimizer parameter group."""

from __future__ import annotations

import json

import pytest

from lorakit.config import load_config
from lorakit.engine import train


def test_text_encoder_learning_rate_is_its_own_group(tiny_models, images4, tmp_path, sd_plugins):
    from lorakit_sd.testing import tiny_config

    data = tiny_config(
        tiny_models["sd1"],
        images4,
        tmp_path / "run",
        max_steps=1,
        learning_rate=1e-3,
        sd={"train_text_encoder": True, "text_encoder_lr": 5e-5},
    )
    train(
        load_config(data=data, registries=sd_plugins.registries), plugins=sd_plugins, progress=False
    )
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-1" / "optimizer.json").read_text())
    lrs = [group["lr"] for group in state["param_groups"]]
    assert lrs == [pytest.approx(1e-3), pytest.approx(5e-5)]
    unet, text = (len(group["params"]) for group in state["param_groups"])
    assert unet > 0 and text > 0
