"""``sd.channels_last: true`` changes the UNet's memory layout and nothing else (issue 29):
the same per-step losses and the same saved LoRA as the default run (off on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sd_helpers import first_losses, train_tiny


def _conv_layouts(unet: Any) -> set[bool]:
    """For every 4-D UNet weight: whether it is stored channels-last."""
    import torch

    return {
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in unet.parameters()
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1
    }


def test_channels_last_changes_only_the_layout(
    tiny_models: dict[str, Any], images4: Path, tmp_path: Path
) -> None:
    """Three steps of the tiny SD1 model with the default layout and with channels-last:
    the UNet's convolution weights really are channels-last in the second run only, the
    losses agree within 1e-5 (relative) and every saved LoRA tensor within 1e-4 (the
    convolution kernels sum in another order; Adam's normalised steps carry the last-bit
    differences into the weights: ~1e-5 here)."""
    import torch
    from safetensors.torch import load_file

    model = tiny_models["sd1"]
    runs = {}
    for name, setting in (("default", None), ("channels_last", True)):
        result, cap = train_tiny(
            tmp_path,
            model,
            images4,
            capture=True,
            max_steps=3,
            output_dir=tmp_path / name,
            sd={"channels_last": setting},
        )
        assert cap is not None
        files = [p for p in result.outputs if str(p).endswith(".safetensors")]
        runs[name] = (first_losses(result.output_dir), load_file(files[0]), _conv_layouts(cap.unet))

    default_losses, default_lora, default_layout = runs["default"]
    losses, lora, layout = runs["channels_last"]
    assert default_layout == {False} and layout == {True}
    assert len(losses) == 3
    assert losses == pytest.approx(default_losses, rel=1e-5)
    assert lora.keys() == default_lora.keys()
    for key, tensor in default_lora.items():
        assert torch.allclose(lora[key], tensor, rtol=1e-4, atol=1e-4), key
    # the LoRA moved: two untrained adapters would agree trivially
    assert any(k.endswith("lora_up.weight") and t.abs().max() > 0 for k, t in lora.items())
