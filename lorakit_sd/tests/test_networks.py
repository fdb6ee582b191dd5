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
    from lorakit_sd.lorafiles.names import module_table
    from lycoris.modules import get_module, make_module

    if family == "sd1":  # lycoris.kohya's own naming: "lora_unet_" + the module path
        table = {f"lora_unet_{n}".replace(".", "_"): m for n, m in pipe.unet.named_modules()}
    else:  # SGM names → the diffusers modules
        table = {stem: entry[2] for stem, entry in module_table(pipe.unet, [], family).items()}
    for stem in sorted({k.split(".")[0] for k in tensors}):
        kind, params = get_module(tensors, stem)
        assert kind is not None, stem
        if f"{stem}.lokr_t2" in tensors:
            _lycoris_tucker_lokr(tensors, stem, table[stem]).apply_to()
        else:
            make_module(kind, params, stem, table[stem]).apply_to()


def _lycoris_tucker_lokr(tensors, stem, module):
    """lycoris-lora's LokrModule for a CP-decomposed (use_tucker) LoKr convolution.

    lycoris-lora 3's file loader (``make_module_from_state_dict``) reads the rank of a
    tucker LoKr from ``lokr_w2_a.size(1)``, which is the output factor in that layout, and
    fails on LyCORIS's own tucker files the same way; its module, built with the rank and
    loaded strictly with the file's tensors, is the reference here.
    """
    from lycoris.modules.lokr import LokrModule

    own = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".")[0] == stem}
    lycoris = LokrModule(
        stem,
        module,
        1.0,
        lora_dim=own["lokr_t2"].shape[0],
        alpha=float(own["alpha"]),
        use_tucker=True,
        decompose_both="lokr_w1_a" in own,
        factor=-1,
    )
    lycoris.load_state_dict(own, strict=True)
    return lycoris


CASES = [(f, n, False) for f in ("sd1", "sdxl") for n in ("loha", "lokr", "dora")]
# use_tucker: 3x3 convolutions CP-decomposed (hada_t1/hada_t2, lokr_t2), read by lycoris-lora
CASES += [("sd1", "loha", True), ("sdxl", "lokr", True)]


@pytest.mark.parametrize(("family", "network", "tucker"), CASES)
def test_network_file_through_lycoris_reproduces_the_trained_model(
    tiny_models, tmp_path, family, network, tucker
):
    from safetensors.torch import load_file

    model = tiny_models[family]
    data = write_tiny_images(tmp_path / "data", 2)
    sd = {"network": network, "conv_rank": 2, "conv_alpha": 1.0, "use_tucker": tucker}
    sd["lokr_decompose_both"] = family == "sdxl"  # lokr_w1_a/_b as well as a full lokr_w1
    _, cap = train_tiny(
        tmp_path,
        model,
        data,
        capture=True,
        max_steps=2,
        learning_rate=1e-2,
        target_modules=ATTN,
        lora_alpha=2.0,
        sd=sd,
    )
    run = tmp_path / "run"
    # diffusers reads LoRA and DoRA only
    assert (run / "run.diffusers.safetensors").exists() == (network == "dora")
    tensors = load_file(str(run / "run.safetensors"))
    _check_client_key_rules(tensors, network)
    if network == "lokr" and family == "sdxl":
        assert any(k.endswith(".lokr_w1_a") for k in tensors)  # lokr_decompose_both
    conv = [k for k in tensors if "resnets" in k or "in_layers" in k]
    assert conv  # the 3x3 convolutions are adapted too (conv_rank)
    cores = {k for k in tensors if k.endswith((".hada_t1", ".hada_t2", ".lokr_t2"))}
    if tucker:  # a CP core for every 3x3 convolution, and only for those
        assert cores and all(tensors[k].shape[2:] == (3, 3) for k in cores)
        stems = {k.rsplit(".", 1)[0] for k in cores}
        want = ("hada_t1", "hada_t2") if network == "loha" else ("lokr_t2",)
        assert cores == {f"{stem}.{n}" for stem in stems for n in want}
    else:
        assert not cores
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
    from lorakit_sd.commands.merge import merge_checkpoint
    from lorakit_sd.models import pipeline_class

    from lorakit.diagnostics.inspect import inspect_path

    out = merge_checkpoint(
        str(model.single_file),
        [(str(run / "run.safetensors"), 1.0)],
        tmp_path / "merged.safetensors",
        "float32",
    )
    merged = pipeline_class(family).from_single_file(
        str(out), config=str(model.config_dir), local_files_only=True
    )
    baked, _ = unet_output(merged, merged.unet, encoders, family)
    assert (baked - want).abs().max().item() < 1e-4
    # sample's path: the file's updates added into a loaded pipeline's weights
    from lorakit_sd.lorafiles.apply import apply_to_model
    from lorakit_sd.models import BaseModel

    fresh = model.load()
    apply_to_model(BaseModel(fresh, family, "diffusers", ""), [(str(run / "run.safetensors"), 1.0)])
    applied, _ = unet_output(fresh, fresh.unet, encoders, family)
    assert (applied - want).abs().max().item() < 1e-4
    report = inspect_path(run / "run.safetensors")
    if network == "dora":
        assert report.dora
    else:
        assert {"loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr"}[network] in report.format


def test_read_back_updates_follow_the_formats_formulas(tmp_path):
    """LoHa: (w1a@w1b)⊙(w2a@w2b)·alpha/r; LoKr: kron(w1, w2), scale 1 with no _b factor;
    DoRA: each output row of W + up@down·alpha/r rescaled to dora_scale."""
    import torch
    from lorakit_sd.lorafiles.read import entry_module, read_lora
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    files = {
        "loha": {
            "hada_w1_a": r(6, 2),
            "hada_w1_b": r(2, 4),
            "hada_w2_a": r(6, 2),
            "hada_w2_b": r(2, 4),
            "alpha": torch.tensor(1.0),
        },
        "lokr": {"lokr_w1": r(2, 2), "lokr_w2": r(3, 2), "alpha": torch.tensor(7.0)},
        "dora": {
            "lora_down.weight": r(2, 4),
            "lora_up.weight": r(6, 2),
            "alpha": torch.tensor(1.0),
            "dora_scale": r(6, 1).abs(),
        },
    }
    base = r(6, 4)
    for network, tensors in files.items():
        path = tmp_path / f"{network}.safetensors"
        save_file({f"{stem}.{k}": v for k, v in tensors.items()}, str(path))
        entry = read_lora(path).entries[stem]
        module = entry_module(path, stem, entry, "unet", "x", (6, 4))
        got = module.delta(0.5, base)
        t = tensors
        if network == "loha":
            want = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) / 2
        elif network == "lokr":
            want = torch.kron(t["lokr_w1"], t["lokr_w2"])  # no alpha: neither is decomposed
        else:
            merged = base + t["lora_up.weight"] @ t["lora_down.weight"] / 2
            want = merged / merged.norm(dim=1, keepdim=True) * t["dora_scale"] - base
        torch.testing.assert_close(got, want * 0.5)


def test_locon_needs_conv_rank_and_types_are_checked():
    from lorakit_sd.config import SDSection
    from pydantic import ValidationError

    assert SDSection().network == "lora"
    with pytest.raises(ValidationError, match="network locon needs conv_rank"):
        SDSection(network="locon")
    with pytest.raises(ValidationError):
        SDSection(network="oft")
    assert SDSection(network="locon", conv_rank=4).network == "locon"
    with pytest.raises(ValidationError, match="use_tucker applies to network loha or lokr"):
        SDSection(network="lora", conv_rank=4, use_tucker=True)
    with pytest.raises(ValidationError, match="use_tucker needs conv_rank"):
        SDSection(network="loha", use_tucker=True)
