"""GPU-path bookkeeping, tested without a GPU: device identity, preview decoding, temp files."""

from __future__ import annotations

import pytest
import torch


def test_devices_that_differ_only_in_index_form_are_the_same():
    from lorakit_sd.step.devices import modules_elsewhere, same_device

    assert same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert same_device("cuda:0", torch.device("cuda"))
    assert not same_device("cuda:1", "cuda:0")
    assert not same_device("cpu", "cuda")
    assert same_device("cpu", torch.device("cpu"))
    # what sample() parks: an encoder that reports cuda:0 is already on accelerator "cuda"
    vae, encoder, parked = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    where = {id(vae): torch.device("cuda:0"), id(encoder): torch.device("cuda:0")}
    where[id(parked)] = torch.device("cpu")
    away = modules_elsewhere([vae, encoder, parked], torch.device("cuda"), lambda m: where[id(m)])
    assert away == [parked]


def _sampler(tiny_models, family):
    from lorakit_sd.families.unet_sampling import sampling_pipeline

    pipe = tiny_models[family].load()
    return sampling_pipeline(pipe, family, "epsilon")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_preview_that_decodes_to_nan_fails_loudly(tiny_models, family):
    from lorakit_sd.families.unet_sampling import render

    from lorakit.errors import RunError

    sampler = _sampler(tiny_models, family)
    with torch.no_grad():
        sampler.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(RunError, match="NaN"):
        render(sampler, ["a red cat"], seed=0, steps=2, guidance=1.0, width=32, height=32)


def test_the_vae_decodes_outside_autocast_in_its_own_dtype(tiny_models):
    """Under a half-precision autocast (the GPU path), the VAE still decodes in float32."""
    import numpy as np
    from lorakit_sd.families.unet_sampling import decode_latents

    sampler = _sampler(tiny_models, "sdxl")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    want = np.asarray(decode_latents(sampler, latents))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = np.asarray(decode_latents(sampler, latents))
    assert np.array_equal(want, got)
    # and it equals diffusers' own float32 decode of the same latents
    with torch.no_grad():
        image = sampler.vae.decode(latents / sampler.vae.config.scaling_factor).sample
    reference = np.asarray(sampler.image_processor.postprocess(image, output_type="pil")[0])
    assert np.array_equal(reference, got)


def test_fp16_vae_with_force_upcast_decodes_in_float32(tiny_models):
    import numpy as np
    from lorakit_sd.families.unet_sampling import decode_latents

    sampler = _sampler(tiny_models, "sdxl")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    want = np.asarray(decode_latents(sampler, latents))
    sampler.vae.to(torch.float16)
    sampler.vae.register_to_config(force_upcast=True)
    got = np.asarray(decode_latents(sampler, latents))
    assert next(sampler.vae.parameters()).dtype == torch.float16  # put back as it was
    # float16 weights rounded, decoded in float32: within a step or two of 255
    assert np.abs(want.astype(int) - got.astype(int)).max() <= 2


def test_an_opted_in_ckpt_leaves_no_converted_copy_behind(tiny_models, tmp_path, monkeypatch):
    import tempfile

    from lorakit_sd.models import load_base
    from safetensors.torch import load_file

    model = tiny_models["sd1"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(model.single_file))}, ckpt)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = load_base(str(ckpt), base_config=str(model.config_dir), allow_unsafe_pickle=True)
    assert list(scratch.iterdir()) == []
    assert loaded.path == str(ckpt)
    reference = model.load().unet.state_dict()
    got = loaded.pipe.unet.state_dict()
    assert all(torch.equal(reference[k], got[k]) for k in reference)
