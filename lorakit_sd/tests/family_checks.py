"""Checks the Qwen-Image and Z-Image tests share: inspect, plan, the template, sampling."""

from __future__ import annotations

import torch


def injected(module):
    """How many LoRA modules PEFT placed in ``module``."""
    return sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A"))


def inspect_files(*paths):
    """``lorakit inspect``'s reading of each file, with the sd plugin installed."""
    import lorakit_sd.plugin

    from lorakit.diagnostics.inspect import inspect_path
    from lorakit.plugins import build_plugins, set_plugins

    set_plugins(build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)]))
    try:
        return [inspect_path(p) for p in paths]
    finally:
        set_plugins(None)


def plan_of(model, data, tmp, **sd):
    """``lorakit plan``'s estimate of a run on ``model`` (gradient checkpointing on)."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.planning import make_plan
    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    try:
        cfg = tiny_config(model, data, tmp / "p", sd=sd, gradient_checkpointing=True)
        return make_plan(load_config(data=cfg, registries=plugins.registries), ladder=False)
    finally:
        set_plugins(None)


def check_template(tmp, name, model, capsys, still):
    """``config init --template name``, only paths, size and steps replaced, trains (bf16
    autocast, diffusers' gradient checkpointing) and both files load in the pipeline with the
    trained deltas; ``still``: the modules that get no gradient."""
    import yaml
    from accelerate.state import AcceleratorState
    from sd_helpers import first_losses
    from test_templates_sd import STEPS, _deltas, _train_template

    # bf16 sets accelerate's process-wide state, which an earlier run's "no" holds
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        template, cap, dtypes = _train_template(tmp, name, model, capsys)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert template["mixed_precision"] == "bf16" and template["gradient_checkpointing"] is True
    assert torch.bfloat16 in dtypes and cap.unet.is_gradient_checkpointing
    ran = yaml.safe_load((tmp / "out" / "config.yaml").read_text())
    assert ran["lora_rank"] == template["lora_rank"] == 16
    assert len(first_losses(tmp / "out")) == STEPS
    want = _deltas(cap.unet)
    assert [k for k, d in want.items() if d.abs().max() == 0] == still
    for file in ("out.safetensors", "out.diffusers.safetensors"):
        pipe = model.load()
        pipe.load_lora_weights(str(tmp / "out" / file))
        got = _deltas(pipe.transformer)
        assert set(got) == set(want), file
        for key, delta in want.items():
            assert (got[key] - delta).abs().max() <= 1e-5 * max(delta.abs().max(), 1e-12), key


def rendered(path):
    """The first image ``lorakit sample`` wrote, as an int array."""
    import numpy as np
    from PIL import Image

    with Image.open(next(p for p in path if "sheet" not in p.name)) as im:
        return np.asarray(im.convert("RGB"), dtype=int)
