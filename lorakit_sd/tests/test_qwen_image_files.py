"""Qwen-Image from ComfyUI's split files: the transformer file (bf16, or fp8 "scaled"), the
Qwen2.5-VL file under transformers 4's names and the VAE in Wan 2.1's layout, with a
configs-only folder as ``sd.base_config``.

The files are written from a seed-1 model and the config folder is a seed-0 model's with its
weights removed, so every part must come from its file. diffusers' own
``convert_wan_vae_to_diffusers`` judges the VAE layout; transformers reads the text encoder.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from flow_helpers import train
from lorakit_sd.testing import write_tiny_images

from lorakit.api import UsageError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from lorakit_sd.families.qwen_image.standin import build_tiny_pipeline, build_tiny_qwen_image
    from lorakit_sd.families.qwen_image.standin_files import write_split_files

    from lorakit.testing import one_thread

    root = tmp_path_factory.mktemp("qwen-files")
    with one_thread():
        model = build_tiny_qwen_image(root / "config")
        pipe = build_tiny_pipeline(seed=1)
        bf16 = write_split_files(pipe, root / "bf16", model.diffusers_dir)
        fp8 = write_split_files(pipe, root / "fp8", model.diffusers_dir, fp8=True)
    return model, pipe, {"bf16": bf16, "fp8": fp8}


def _load(path):
    import lorakit_sd.plugin
    from lorakit_sd.models import load_base

    from lorakit.plugins import build_plugins, set_plugins

    set_plugins(build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)]))
    try:
        return load_base(str(path), base_config=str(path.parents[1] / "configs"))
    finally:
        set_plugins(None)


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
    from safetensors.torch import load_file

    _, pipe, paths = files
    model = _load(paths[kind])
    assert model.family == "qwen_image"
    for part in ("vae", "text_encoder"):
        got, want = getattr(model.pipe, part).state_dict(), getattr(pipe, part).state_dict()
        assert got.keys() >= want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    stored = load_file(str(paths[kind]))
    got = model.pipe.transformer.state_dict()
    for key, value in pipe.transformer.state_dict().items():
        if kind == "bf16":
            expected = value.to(torch.bfloat16).float()
        elif stored[key].dtype == torch.float8_e4m3fn:  # ComfyUI's scaled fp8: w8 * scale
            scale = stored[key.removesuffix(".weight") + ".scale_weight"]
            expected = stored[key].float() * scale
            assert (expected - value).abs().max() <= value.abs().max() / 8  # fp8's precision
        else:
            expected = stored[key].float()
        assert torch.equal(got[key], expected), key


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
    _, _, paths = files
    root = tmp_path / "models"
    shutil.copytree(paths["bf16"].parents[1], root)
    shutil.rmtree(root / part)
    with pytest.raises(UsageError, match=f"no {words}.* holds no") as err:
        _load(root / "diffusion_models" / paths["bf16"].name)
    assert "\n" not in str(err.value)
