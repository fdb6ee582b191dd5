"""Network types (sd.network): LoHa, LoKr and DoRA trained with PEFT, written in LyCORIS's
layout, and read back by lycoris-lora's own loader to the trained model's output."""

from __future__ import annotations

import pytest
from lorakit_sd.testing import write_tiny_images
from sd_helpers import train_tiny, unet_output

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


# What each client reads, per module stem (the part of a key before its first dot):
# ComfyUI comfy/weight_adapter: LoHa needs {stem}.hada_w1_a/_w1_b/_w2_a/_w2_b (+ optional
# hada_t1/t2); LoKr takes lokr_w1 or lokr_w1_a/_b and lokr_w2 or lokr_w2_a/_b (+ lokr_t2);
# LoRA reads lora_up.weight/lora_down.weight, and {stem}.alpha / {stem}.dora_scale for all.
# A1111 extensions-builtin/Lora: the same stem split, network_hada wants all four hada_
# tensors, network_lokr has_1 and has_2 as above, network_lora lora_up/lora_down.
COMFY_A1111 = {
    "loha": lambda w: {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= w,
    "lokr": lambda w: (
        ("lokr_w1" in w or {"lokr_w1_a", "lokr_w1_b"} <= w)
        and ("lokr_w2" in w or {"lokr_w2_a", "lokr_w2_b"} <= w)
    ),
    "dora": lambda w: {"lora_up.weight", "lora_down.weight"} <= w,
}
READ = {
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
    "dora": {"lora_up.weight", "lora_down.weight", "dora_scale"},
}


def _check_client_key_rules(tensors, network):
    """Every module stem of the file is one ComfyUI and A1111 read as ``network``."""
    from lorakit_sd.networks import file_network

    stems: dict[str, set[str]] = {}
    for key in tensors:
        stem, _, kind = key.partition(".")
        stems.setdefault(stem, set()).add(kind)
    assert stems and all(s.startswith("lora_unet_") for s in stems)
    for stem, kinds in stems.items():
        assert COMFY_A1111[network](kinds), stem
        assert kinds <= READ[network] | {"alpha"}, stem  # nothing a client would skip
        assert "alpha" in kinds
    assert file_network(tensors) == network


def _lycoris_apply(tensors, pipe, family):
    """Hook every module of the file into ``pipe.unet`` through lycoris-lora's loader."""
    from lorakit_sd.lora_format import module_table
    from lycoris.modules import get_module, make_module

    if family == "sd1":  # lycoris.kohya's own naming: "lora_unet_" + the module path
        table = {f"lora_unet_{n}".replace(".", "_"): m for n, m in pipe.unet.named_modules()}
    else:  # SGM names → the diffusers modules
        table = {stem: entry[2] for stem, entry in module_table(pipe.unet, [], family).items()}
    for stem in sorted({k.split(".")[0] for k in tensors}):
        kind, params = get_module(tensors, stem)
        assert kind is not None, stem
        make_module(kind, params, stem, table[stem]).apply_to()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("network", ["loha", "lokr", "dora"])
def test_network_file_through_lycoris_reproduces_the_trained_model(
    tiny_models, tmp_path, family, network
):
    from safetensors.torch import load_file

    model = tiny_models[family]
    data = write_tiny_images(tmp_path / "data", 2)
    sd = {"network": network, "conv_rank": 2, "conv_alpha": 1.0}
    sd["lokr_decompose_both"] = family == "sdxl"  # lokr_w1_a/_b as well as a full lokr_w1
    _, cap = train_tiny(
        tmp_path, model, data, capture=True, max_steps=2, learning_rate=1e-2,
        target_modules=ATTN, lora_alpha=2.0, sd=sd,
    )  # fmt: skip
    run = tmp_path / "run"
    assert not (run / "run.diffusers.safetensors").exists()  # diffusers reads LoRA only
    tensors = load_file(str(run / "run.safetensors"))
    _check_client_key_rules(tensors, network)
    if network == "lokr" and family == "sdxl":
        assert any(k.endswith(".lokr_w1_a") for k in tensors)  # lokr_decompose_both
    conv = [k for k in tensors if "resnets" in k or "in_layers" in k]
    assert conv  # the 3x3 convolutions are adapted too (conv_rank)
    cap.unet.eval()
    pipe = model.load()
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    base, _ = unet_output(pipe, pipe.unet, encoders, family)
    want, _ = unet_output(pipe, cap.unet, encoders, family)
    assert (want - base).abs().max().item() > 1e-3  # training changed the output
    _lycoris_apply(tensors, pipe, family)
    got, _ = unet_output(pipe, pipe.unet, encoders, family)
    assert (got - want).abs().max().item() < 1e-4
    # merge bakes the same update into a checkpoint (diffusers loads it back)
    from lorakit_sd.merge import merge_checkpoint
    from lorakit_sd.models import pipeline_class

    from lorakit.diagnostics.inspect import inspect_path

    out = merge_checkpoint(
        str(model.single_file), [(str(run / "run.safetensors"), 1.0)],
        tmp_path / "merged.safetensors", "float32",
    )  # fmt: skip
    merged = pipeline_class(family).from_single_file(
        str(out), config=str(model.config_dir), local_files_only=True
    )
    baked, _ = unet_output(merged, merged.unet, encoders, family)
    assert (baked - want).abs().max().item() < 1e-4
    report = inspect_path(run / "run.safetensors")
    if network == "dora":
        assert report.dora
    else:
        assert {"loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr"}[network] in report.format
