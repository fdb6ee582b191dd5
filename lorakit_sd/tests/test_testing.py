"""The tiny-model builders and the original (single-file) layout they write."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lorakit_sd.families import ldm


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_loads_in_diffusers_with_every_weight(tiny_models, family):
    """diffusers' own from_single_file reads the written checkpoint back exactly."""
    from lorakit_sd.models import pipeline_class

    model = tiny_models[family]
    reference = model.load()
    loaded = pipeline_class(family).from_single_file(
        str(model.single_file), config=str(model.config_dir), local_files_only=True
    )
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for name in components:
        want = getattr(reference, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert set(want) == set(got), name
        for key, value in want.items():
            assert torch.equal(value, got[key]), f"{name}.{key}"
    assert not any(model.config_dir.rglob("*.safetensors"))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_original_names_round_trip(tiny_models, family):
    """unet_ldm_to_path inverts unet_path_to_ldm for every UNet weight."""
    unet = tiny_models[family].load().unet
    lpb, ups = ldm.unet_layout(unet.config)
    names = [k for k in unet.state_dict()]
    originals = {ldm.unet_path_to_ldm(k, lpb, ups) for k in names}
    assert len(originals) == len(names)
    for key in names:
        assert ldm.unet_ldm_to_path(ldm.unet_path_to_ldm(key, lpb, ups), lpb) == key
    keys = [ldm.UNET_PREFIX + k for k in originals]
    assert ldm.layers_per_block_from_keys(keys) == lpb


def test_sgm_names_of_the_standard_sdxl_unet():
    """SDXL attention under the SGM input/middle/output block names, as kohya SDXL files
    name it (sd-scripts' ``sdxl_model_util`` conversion tables)."""
    lpb, ups = 2, [True, True, False]
    assert (
        ldm.unet_path_to_ldm("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", lpb, ups)
        == "input_blocks.4.1.transformer_blocks.0.attn2.to_k"
    )
    assert (
        ldm.unet_path_to_ldm("mid_block.attentions.0.proj_in", lpb, ups) == "middle_block.1.proj_in"
    )
    assert (
        ldm.unet_path_to_ldm("up_blocks.0.attentions.0.transformer_blocks.3.attn1.to_q", lpb, ups)
        == "output_blocks.0.1.transformer_blocks.3.attn1.to_q"
    )
    assert (
        ldm.unet_path_to_ldm("up_blocks.1.upsamplers.0.conv", lpb, ups) == "output_blocks.5.2.conv"
    )


def test_tokenizer_is_a_working_clip_bpe():
    from lorakit_sd.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok("a photo of a red cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id
    words = tok.convert_ids_to_tokens(ids[1:4])
    assert words[0] == "a</w>" and "photo" in "".join(words).replace("</w>", "")
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a photo of a red cat"


@pytest.mark.parametrize("layout", ["csv", "jsonl", "txt"])
def test_image_writer_layouts(tmp_path, layout):
    from lorakit_sd.testing import write_tiny_images
    from PIL import Image

    folder = write_tiny_images(tmp_path, 3, layout=layout, sizes=[(40, 24)])
    images = sorted(folder.glob("*.png"))
    assert len(images) == 3 and Image.open(images[0]).size == (40, 24)
    if layout == "csv":
        with open(folder / "metadata.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["file_name"] for r in rows] == [p.name for p in images] and rows[0]["text"]
    elif layout == "jsonl":
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
        assert rows[1]["file_name"] == images[1].name
    else:
        assert images[2].with_suffix(".txt").read_text().strip()
