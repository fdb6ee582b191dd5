"""Out of memory in the sd backend's forward reaches the engine (issue 25): with
``auto_batch_size`` the run continues at half the micro-batch; without it the run fails with
the engine's one ladder.

The UNet's forward raises torch's own ``torch.OutOfMemoryError`` (a forward pre-hook, for
micro-batches above a size) where a GPU would: inside the backend's loss.
"""

from __future__ import annotations

import json

import pytest
import torch
from sd_helpers import train_tiny

from lorakit.engine.oom import OOM_LADDER
from lorakit.errors import RunError


def _unet_runs_out_above(limit: int):
    from diffusers import UNet2DConditionModel

    def hook(module, args):
        if isinstance(module, UNet2DConditionModel) and args[0].shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)


def test_a_forward_oom_shrinks_the_sd_batch(tiny_models, images4, tmp_path, capsys):
    keys = dict(batch_size=4, max_steps=2, trackers=["jsonl"], sd={"bucket": False})
    handle = _unet_runs_out_above(2)
    try:
        auto, _ = train_tiny(
            tmp_path,
            tiny_models["sd1"],
            images4,
            auto_batch_size=True,
            output_dir=tmp_path / "auto",
            **keys,
        )
        with pytest.raises(RunError) as info:
            train_tiny(tmp_path, tiny_models["sd1"], images4, output_dir=tmp_path / "plain", **keys)
    finally:
        handle.remove()
    record = json.loads((auto.output_dir / "run.json").read_text())
    assert record["auto_batch_size"] == [
        {"step": 1, "batch_size": 2, "gradient_accumulation_steps": 2}
    ]
    assert auto.steps == 2 and auto.outputs and all(p.is_file() for p in auto.outputs)
    out = capsys.readouterr().out
    assert out.count("out of memory at batch 4: continuing with batch 2") == 1
    message = str(info.value)
    assert message == f"out of memory at step 1 (batch_size 4): {OOM_LADDER}"
