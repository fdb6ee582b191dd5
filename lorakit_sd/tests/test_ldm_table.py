"""The LDM/SGM ↔ diffusers UNet names, judged by diffusers' own single-file converter.

The UNets are built at the real SD1.5 and SDXL geometry on the meta device (no weights).
Every weight lorakit names in the original layout must come back, as the same tensor,
from ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint``; and lorakit's
inverse (used by ``lorakit merge``) must give diffusers' name for every weight *and* for
the module it belongs to (``output_blocks.2.1.conv``, the upsampler LoCon adapts).
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
from lorakit_sd.families import ldm


def _real_unet(family):
    import torch
    from diffusers import UNet2DConditionModel

    spec = json.loads(
        resources.files("lorakit_sd").joinpath("data/standard_models.json").read_text()
    )[family]["unet"]
    with torch.device("meta"):
        return UNet2DConditionModel(**spec)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_unet_names_agree_with_diffusers_converter(family):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = _real_unet(family)
    state = unet.state_dict()
    lpb, ups = ldm.unet_layout(unet.config)
    original = {ldm.unet_path_to_ldm(k, lpb, ups): k for k in state}
    assert len(original) == len(state)
    checkpoint = {ldm.UNET_PREFIX + name: state[key] for name, key in original.items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))
    assert set(converted) == set(state)
    assert all(converted[k] is state[k] for k in state)  # each weight where diffusers puts it
    by_tensor = {id(tensor): name for name, tensor in checkpoint.items()}
    upsampler_modules = 0
    for key, tensor in converted.items():
        name = by_tensor[id(tensor)][len(ldm.UNET_PREFIX) :]
        assert ldm.unet_ldm_to_path(name, lpb) == key
        stem, _, leaf = name.rpartition(".")
        if leaf in ("weight", "bias"):
            assert ldm.unet_ldm_to_path(stem, lpb) == key.rpartition(".")[0], stem
            upsampler_modules += "upsamplers" in key
    assert upsampler_modules == 2 * (len(ups) - 1)  # weight + bias of each upsampler conv
