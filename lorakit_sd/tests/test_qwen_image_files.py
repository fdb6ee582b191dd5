"""Qwen-Image from ComfyUI's split files: the transformer file (bf16, or fp8 "scaled"), the
Qwen2.5-VL file under transformers 4's names and the VAE in Wan 2.1's layout, with a
configs-only folder as ``sd.base_config``.

The files are written from a seed-1 model and the config folder is a seed-0 model's with its
weights removed, so every part must come from its file. diffusers' own
``convert_wan_vae_to_diffusers`` judges the VAE layout; transformers reads the text encoder.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import check_missing_part, check_parts_from_files, split_models
from flow_helpers import train
from lorakit_sd.testing import write_tiny_images


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from lorakit_sd.families.qwen_image.standin import build_tiny_pipeline, build_tiny_qwen_image
    from lorakit_sd.families.qwen_image.standin_files import write_split_files

    root = tmp_path_factory.mktemp("qwen-files")
    return split_models(root, build_tiny_qwen_image, build_tiny_pipeline, write_split_files)


def test_the_vae_file_is_in_the_layout_diffusers_converts():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from lorakit_sd.families.qwen_image.standin import tiny_vae
    from lorakit_sd.families.qwen_image.standin_files import vae_to_wan

    state = tiny_vae(0).state_dict()
    wan = vae_to_wan(state)
    assert "encoder.downsamples.0.residual.0.gamma" in wan and "decoder.middle.1.proj.weight" in wan
    back = convert_wan_vae_to_diffusers(dict(wan))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_every_part_comes_from_its_file(files, kind):
    _, pipe, paths = files
    check_parts_from_files(paths[kind], pipe, "qwen_image", lambda state: state)


def test_a_run_trains_from_the_fp8_files(files, tmp_path):
    model, _, paths = files
    data = write_tiny_images(tmp_path / "data", 2)
    result, cap = train(
        tmp_path,
        model,
        data,
        max_steps=2,
        base_model=str(paths["fp8"]),
        sd={"base_config": str(paths["fp8"].parents[1] / "configs")},
    )
    assert result.steps == 2
    ups = {n: p for n, p in cap.unet.named_parameters() if "lora_B" in n}  # zero at first
    still = [n.split(".lora_B")[0] for n, p in ups.items() if p.abs().max() == 0]
    # the last block's text-stream output is never read (the transformer returns the image
    # stream): its text queries and text output projection get no gradient
    last = ["transformer_blocks.1.attn.add_q_proj", "transformer_blocks.1.attn.to_add_out"]
    assert len(ups) == 16 and still == last, still


@pytest.mark.parametrize(
    "part,words", [("text_encoders", "Qwen2.5-VL text encoder"), ("vae", "Qwen-Image VAE")]
)
def test_a_missing_part_is_one_line_naming_it(files, tmp_path, part, words):
    check_missing_part(files[2]["bf16"], tmp_path, part, words)
