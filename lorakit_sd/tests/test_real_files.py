"""Files people really have: SDXL LoRAs with diffusers UNet names, VAE/encoder cache keys."""

from __future__ import annotations

import torch
from lorakit_sd.testing import write_tiny_images
from sd_helpers import train_tiny

UNET_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "conv1",
    "time_emb_proj",
    "conv",
    "linear_1",
]


def test_sdxl_loras_with_diffusers_unet_names_are_read_as_their_sgm_names(tiny_models, tmp_path):
    from lorakit_sd.commands.export import export
    from lorakit_sd.commands.merge import merge_checkpoint
    from lorakit_sd.lorafiles.names import module_table
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tiny_models["sdxl"]
    data = write_tiny_images(tmp_path / "data", 2)
    train_tiny(tmp_path, model, data, max_steps=1, target_modules=UNET_TARGETS)
    kohya = tmp_path / "run" / "run.safetensors"
    pipe = model.load()
    table = module_table(pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], "sdxl")
    to_diffusers_style = {
        stem: "lora_unet_" + path.replace(".", "_")
        for stem, (component, path, _) in table.items()
        if component == "unet"
    }
    with safe_open(str(kohya), framework="pt") as f:
        metadata = dict(f.metadata())
    renamed = {}
    for key, value in load_file(str(kohya)).items():
        stem, _, suffix = key.partition(".")
        renamed[f"{to_diffusers_style[stem]}.{suffix}"] = value
    kinds = {k.split("_")[2] for k in renamed}
    assert {"down", "up", "mid", "time", "add"} <= kinds  # down_blocks, up_blocks, mid_block, ...
    assert not any(
        k.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks")) for k in renamed
    )
    other = tmp_path / "diffusers-names.safetensors"
    save_file(renamed, str(other), metadata=metadata)
    # export reads both to the same diffusers file
    a = export(kohya, "diffusers", tmp_path / "a.safetensors", base=str(model.diffusers_dir))[0]
    b = export(other, "diffusers", tmp_path / "b.safetensors", base=str(model.diffusers_dir))[0]
    want, got = load_file(str(a)), load_file(str(b))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # merge bakes both into the same checkpoint
    m1 = merge_checkpoint(
        str(model.single_file), [(str(kohya), 1.0)], tmp_path / "m1.safetensors", "float32"
    )
    m2 = merge_checkpoint(
        str(model.single_file), [(str(other), 1.0)], tmp_path / "m2.safetensors", "float32"
    )
    want, got = load_file(str(m1)), load_file(str(m2))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_vae_differing_in_one_encoder_weight_misses_the_latent_cache(tiny_models, tmp_path):
    from lorakit_sd.data.cache import build_latent_cache, build_text_cache
    from lorakit_sd.data.dataset import Item
    from lorakit_sd.data.images import file_hash

    data = write_tiny_images(tmp_path / "data", 2)
    items = [
        Item(str(p), "a red cat", str(data), (32, 32), (32, 32), (0, 0), (32, 32), file_hash(p))
        for p in sorted(data.glob("*.png"))
    ]
    pipe = tiny_models["sd1"].load()
    vae, cache = pipe.vae, tmp_path / "cache"

    def hits() -> int:
        return build_latent_cache(items, vae, flip=False, batch_size=2, directory=cache).hits

    assert hits() == 0 and hits() == 2
    names = sorted(vae.state_dict())
    middle = "encoder.down_blocks.0.resnets.0.conv1.weight"
    assert middle in names[4:-4]  # not one of the first or last few tensors
    with torch.no_grad():
        vae.get_parameter(middle)[0, 0, 0, 0] += 1e-3
    assert hits() == 0
    # the text cache likewise, for a text-encoder weight deep inside
    encoders, tokenizers = [pipe.text_encoder], [pipe.tokenizer]

    def text_hits() -> int:
        return build_text_cache(
            ["a red cat"], tokenizers, encoders, "sd1", batch_size=1, directory=cache
        ).hits

    assert text_hits() == 0 and text_hits() == 1
    with torch.no_grad():
        pipe.text_encoder.get_parameter("encoder.layers.0.mlp.fc1.weight")[0, 0] += 1e-3
    assert text_hits() == 0
