"""Z-Image from ComfyUI's split files: the transformer in the released layout (bf16, or fp8
"scaled"), Qwen3 under the causal LM's names and FLUX.1's VAE in its original layout, with a
configs-only folder as ``sd.base_config``.

The files come from a seed-1 model and the config folder from a seed-0 model without its
weights, so every part must come from its file. diffusers' own
``convert_z_image_transformer_checkpoint_to_diffusers`` judges the transformer's layout.
"""

from __future__ import annotations

import pytest
from family_checks import check_missing_part, check_parts_from_files, split_models
from flow_helpers import train
from lorakit_sd.testing import write_tiny_images
from sd_helpers import first_losses


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from lorakit_sd.families.zimage.standin import build_tiny_pipeline, build_tiny_zimage
    from lorakit_sd.families.zimage.standin_files import write_split_files

    root = tmp_path_factory.mktemp("zimage-files")
    return split_models(root, build_tiny_zimage, build_tiny_pipeline, write_split_files)


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_every_part_comes_from_its_file(files, kind):
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers as to_diffusers,
    )

    _, pipe, paths = files
    check_parts_from_files(paths[kind], pipe, "zimage", lambda state: to_diffusers(dict(state)))


def test_a_run_trains_from_the_fp8_files(files, tmp_path):
    model, _, paths = files
    data = write_tiny_images(tmp_path / "data", 2)
    result, cap = train(
        tmp_path,
        model,
        data,
        max_steps=2,
        base_model=str(paths["fp8"]),
        sd={"base_config": str(paths["fp8"].parents[1] / "configs"), "max_sequence_length": 32},
    )
    assert result.steps == 2 and len(first_losses(result.output_dir)) == 2
    ups = [p for n, p in cap.unet.named_parameters() if "lora_B" in n]  # zero at first
    assert ups and all(p.abs().max() > 0 for p in ups)


@pytest.mark.parametrize(
    "part,words", [("text_encoders", "Qwen3 text encoder"), ("vae", "Z-Image VAE")]
)
def test_a_missing_part_is_one_line_naming_it(files, tmp_path, part, words):
    check_missing_part(files[2]["bf16"], tmp_path, part, words)
