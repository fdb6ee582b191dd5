"""DoRA is written into the diffusers-format file too: diffusers' load_lora_weights reads it
(the magnitude vectors and ``use_dora``) and reproduces the trained UNet to 1e-5."""

from __future__ import annotations

import pytest
from lorakit_sd.testing import write_tiny_images
from sd_helpers import train_tiny, unet_output


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_dora_diffusers_file_loads_in_diffusers_as_trained(tiny_models, tmp_path, family):
    import torch
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    model = tiny_models[family]
    data = write_tiny_images(tmp_path / "data", 2)
    result, cap = train_tiny(
        tmp_path,
        model,
        data,
        capture=True,
        max_steps=3,
        learning_rate=5e-2,
        lora_rank=4,
        lora_alpha=2,
        export_formats=["diffusers"],
        sd={"network": "dora"},
    )
    path = result.output_dir / "run.diffusers.safetensors"
    assert path.is_file(), "no diffusers file written for DoRA"
    tensors = load_file(str(path))
    magnitudes = [k for k in tensors if k.endswith("lora_magnitude_vector")]
    assert magnitudes and len(magnitudes) * 2 == len(tensors) - len(magnitudes)
    pipe = DiffusionPipeline.from_pretrained(model.diffusers_dir)
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
    trained, _ = unet_output(pipe, cap.unet, encoders, family)
    base, _ = unet_output(pipe, pipe.unet, encoders, family)
    pipe.load_lora_weights(str(path))
    loaded = {n for n, _ in pipe.unet.named_parameters() if "lora_" in n}
    assert len(loaded) == len(tensors)  # every tensor of the file injected
    assert pipe.unet.peft_config["default_0"].use_dora
    out, _ = unet_output(pipe, pipe.unet, encoders, family)
    assert (trained - base).abs().max() > 1e-4
    torch.testing.assert_close(out, trained, atol=1e-5, rtol=1e-5)
