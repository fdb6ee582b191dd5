"""LoCon (sd.conv_rank / sd.conv_alpha) and the per-client support warning."""

from __future__ import annotations

import pytest
from lorakit_sd.testing import write_tiny_images
from sd_helpers import lora_keys, train_tiny, unet_output


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_locon_trains_3x3_convolutions_exported_under_kohya_names(
    tiny_models, tmp_path, family, capsys
):
    model = tiny_models[family]
    data = write_tiny_images(tmp_path / "data", 2)
    _, cap = train_tiny(
        tmp_path,
        model,
        data,
        capture=True,
        max_steps=2,
        learning_rate=1e-2,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv_in"],
        sd={"conv_rank": 2, "conv_alpha": 1.0},
    )
    err = capsys.readouterr()
    log = err.out + err.err
    assert "LoRA on conv_in loads in diffusers, ComfyUI and A1111" in log
    assert "kohya sd-scripts" in log  # and only conv_in is named: LoCon's convs are in blocks
    path = tmp_path / "run" / "run.safetensors"
    keys, meta = lora_keys(path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    conv1 = (
        "lora_unet_down_blocks_0_resnets_0_conv1"
        if family == "sd1"
        else "lora_unet_input_blocks_1_0_in_layers_2"
    )
    assert tensors[f"{conv1}.lora_down.weight"].shape[0] == 2
    assert tensors[f"{conv1}.lora_down.weight"].shape[2:] == (3, 3)
    assert tensors[f"{conv1}.lora_up.weight"].shape[2:] == (1, 1)
    assert float(tensors[f"{conv1}.alpha"]) == 1.0
    attn = next(k for k in keys if k.endswith("attn1_to_q.lora_down.weight"))
    assert tensors[attn].shape[0] == 4  # lora_rank
    sampler = [k for k in keys if ("downsamplers" in k or "_op." in k) and "lora_down" in k]
    assert sampler and all(tensors[k].shape[2:] == (3, 3) for k in sampler)
    assert meta["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1"}'
    # diffusers reads the file back to the trained model, 3x3 LoRA included
    cap.unet.eval()
    pipe = model.load()
    want, _ = unet_output(pipe, cap.unet, cap.text_encoders, family)
    pipe.load_lora_weights(str(path))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    got, _ = unet_output(pipe, pipe.unet, encoders, family)
    assert (got - want).abs().max().item() < 1e-4


def test_modules_outside_kohya_blocks_are_named_in_the_warning(tiny_models):
    from lorakit_sd.lorafiles.clients import warn_unsupported
    from peft import LoraConfig

    from lorakit_sd import families

    unet = tiny_models["sdxl"].load().unet
    unet.add_adapter(
        LoraConfig(
            r=2,
            target_modules=["to_q", "conv1", "conv_in", "conv_out", "linear_1", "proj_in"],
        )
    )
    logs: list[str] = []
    outside = warn_unsupported(unet, families.get("sdxl"), logs.append)
    assert sorted(outside) == [
        "add_embedding.linear_1",
        "conv_in",
        "conv_out",
        "time_embedding.linear_1",
    ]
    assert len(logs) == 1 and "kohya sd-scripts" in logs[0] and "conv_in" in logs[0]
    quiet = tiny_models["sd1"].load().unet
    quiet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "conv1", "proj_in"]))
    assert warn_unsupported(quiet, families.get("sd1"), logs.append) == [] and len(logs) == 1


def test_flux1_warns_only_of_what_sd_scripts_really_drops():
    """sd-scripts' lora_flux applies the attention and every other linear layer but the final
    one; A1111 does not load FLUX.1 at all, so no FLUX.1 warning names it."""
    from lorakit_sd.lorafiles.clients import client_warnings

    from lorakit_sd import families

    flux = families.get("flux1")
    attention = [
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.add_k_proj",
        "transformer_blocks.0.ff.net.2",
        "single_transformer_blocks.0.attn.to_v",
        "single_transformer_blocks.0.proj_out",
        "single_transformer_blocks.0.proj_mlp",
    ]
    assert client_warnings(flux, attention) == []
    [(warning, dropped)] = client_warnings(flux, [*attention, "proj_out"])
    assert dropped == ["proj_out"]
    assert "lora_flux" in warning and "final_layer.linear" in warning
    assert "A1111" not in warning and "ComfyUI" in warning
    assert client_warnings(families.get("sd3"), attention) == []  # no client facts: no claim
