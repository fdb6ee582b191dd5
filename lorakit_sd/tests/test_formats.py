"""LoRA file formats against the standard SD1.5 / SDXL structures, the strict reader, caches."""

from __future__ import annotations

import json

import pytest
import torch
from lorakit_sd.lorafiles import names as lf
from lorakit_sd.lorafiles import read as lr
from safetensors.torch import save_file

from lorakit.errors import UsageError


@pytest.fixture(scope="module")
def standard():
    from lorakit_sd.commands.export import standard_structure

    tables = {}
    for family in ("sd1", "sdxl"):
        unet, encoders = standard_structure(family)
        tables[family] = lf.module_table(unet, encoders, family)
    return tables


def test_kohya_names_of_the_real_models(standard):
    """The kohya names real SD1.5 / SDXL LoRA files carry (as sd-scripts, ComfyUI and A1111
    read them), from SD1.5 and SDXL built on the meta device."""
    sd1, sdxl = standard["sd1"], standard["sdxl"]
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in sd1
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in sd1
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in sd1
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" in sdxl
    assert "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_out_0" in sdxl
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q" in sdxl
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in sdxl
    assert "lora_te2_text_model_encoder_layers_31_self_attn_v_proj" in sdxl
    assert not any(k.startswith("lora_te_encoder") or "down_blocks" in k for k in sdxl)
    component, path, module = sdxl["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"]
    assert (component, path) == (
        "unet",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    )
    assert tuple(module.weight.shape) == (640, 2048)


def _lora(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_strict_reader_refuses_what_it_cannot_apply(tmp_path, standard):
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    good = {
        f"{stem}.lora_down.weight": torch.ones(4, 320),
        f"{stem}.lora_up.weight": torch.ones(320, 4),
    }
    modules = lr.resolve(lr.read_lora(_lora(tmp_path / "ok.safetensors", good)), standard["sd1"])
    assert modules[0].alpha == 4.0  # no alpha stored: alpha = rank
    cases = {
        "unknown": (
            {
                "lora_unet_nowhere.lora_down.weight": torch.ones(4, 3),
                "lora_unet_nowhere.lora_up.weight": torch.ones(3, 4),
            },
            "match no module",
        ),
        "shape": (
            {
                f"{stem}.lora_down.weight": torch.ones(4, 321),
                f"{stem}.lora_up.weight": torch.ones(320, 4),
            },
            "do not fit",
        ),
        "half": (
            {f"{stem}.lora_down.weight": torch.ones(4, 320)},
            "lacks its lora_down or lora_up",
        ),
        "loha": ({f"{stem}.hada_w1_a": torch.ones(4, 320)}, "lacks some of its loha tensors"),
        "oft": ({f"{stem}.oft_blocks": torch.ones(4, 80, 80)}, "unsupported key"),
    }
    for name, (tensors, message) in cases.items():
        path = _lora(tmp_path / f"{name}.safetensors", tensors)
        with pytest.raises(UsageError, match=message):
            lr.resolve(lr.read_lora(path), standard["sd1"])
    pickled = tmp_path / "x.pt"
    pickled.write_bytes(b"not read")
    with pytest.raises(UsageError, match="must be .safetensors"):
        lr.read_lora(pickled)
    other = _lora(tmp_path / "llm.safetensors", {"model.layers.0.q_proj.weight": torch.ones(2)})
    with pytest.raises(UsageError, match="not an SD LoRA"):
        lr.read_lora(other)


def test_diffusers_format_keeps_alpha_and_rank_per_module(tmp_path, standard):
    table = standard["sdxl"]
    names = [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
    ]
    modules = []
    for i, name in enumerate(names):
        component, path, module = table[name]
        out_f, in_f = module.weight.shape
        rank = 4 + 4 * i
        modules.append(
            lf.LoraModule(
                component, path, torch.randn(rank, in_f), torch.randn(out_f, rank), 2.0 + i
            )
        )
    tensors, meta = lf.to_diffusers(modules, torch.float32)
    assert (
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight" in tensors
    )
    assert "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in tensors
    packed = json.loads(meta[lf.METADATA_KEY])
    assert packed["unet.r"] == 4 and packed["unet.lora_alpha"] == 2.0
    assert packed["text_encoder_2.r"] == 8 and packed["text_encoder_2.lora_alpha"] == 3.0
    path = _lora(tmp_path / "x.diffusers.safetensors", tensors, meta)
    back = lr.resolve(lr.read_lora(path), table)
    assert sorted((m.component, m.rank, m.alpha) for m in back) == [
        ("te2", 8, 3.0),
        ("unet", 4, 2.0),
    ]
    kohya = lf.to_kohya(back, "sdxl", lf.UnetLayout(2, [True, True, False]), torch.float16)
    assert kohya[f"{names[0]}.alpha"].item() == 2.0 and kohya[f"{names[0]}.alpha"].ndim == 0
    assert kohya[f"{names[1]}.lora_down.weight"].dtype == torch.float16


def test_disk_cache_is_reused_and_keyed_by_content(tiny_models, tmp_path):
    from lorakit_sd.data.cache import build_latent_cache
    from lorakit_sd.data.dataset import Item
    from lorakit_sd.data.images import file_hash
    from lorakit_sd.testing import tiny_image

    vae = tiny_models["sd1"].load().vae
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        tiny_image(i).save(paths[-1])

    def items():
        return [
            Item(str(p), "x", str(tmp_path), (32, 32), (32, 32), (0, 0), (32, 32), file_hash(p))
            for p in paths
        ]

    logs: list[str] = []
    first = build_latent_cache(
        items(), vae, flip=True, batch_size=4, directory=tmp_path / "c", log=logs.append
    )
    assert first.hits == 0 and len(list((tmp_path / "c").glob("*.safetensors"))) == 2
    second = build_latent_cache(
        items(), vae, flip=True, batch_size=4, directory=tmp_path / "c", log=logs.append
    )
    assert second.hits == 2 and any("2 of 2 images found" in m for m in logs)
    assert torch.equal(first.get(0)["moments"], second.get(0)["moments"])
    assert set(second.get(1)) == {"moments", "moments_flip"}
    tiny_image(5).save(paths[1])  # a changed image misses the cache
    third = build_latent_cache(
        items(), vae, flip=True, batch_size=4, directory=tmp_path / "c", log=logs.append
    )
    assert third.hits == 1 and len(list((tmp_path / "c").glob("*.safetensors"))) == 3
