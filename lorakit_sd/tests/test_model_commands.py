"""export / merge / sample / config validate on what users bring: an SD1 LoCon (sd-scripts'
key layout, written here by hand), a single-file base offline, a LoRA trained at its own size.

The judge of every merged or converted file is diffusers: ``load_lora_weights`` on the
LoCon, ``from_single_file`` on the merged checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from sd_helpers import lora_keys, unet_output

from lorakit.testing import write_config

RANK, ALPHA = 2, 1.0
TRAINED_AT = (48, 32)  # width, height, as sd-scripts writes ss_resolution


def _cli(capsys, *args):
    from lorakit.cli import main
    from lorakit.plugins import set_plugins

    set_plugins(None)
    capsys.readouterr()
    try:
        code = main([str(a) for a in args]) or 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        set_plugins(None)
    out, err = capsys.readouterr()
    return code, out, err


def _locon_modules(unet):
    """What sd-scripts' LoCon adapts in an SD1 UNet: every conv and attention projection of
    the blocks (resnets, down/upsamplers included), named by their diffusers paths."""
    for path, module in unet.named_modules():
        if not path.startswith(("down_blocks", "mid_block", "up_blocks")):
            continue
        is_conv = isinstance(module, torch.nn.Conv2d)
        is_attn = isinstance(module, torch.nn.Linear) and path.rsplit(".", 1)[-1] in (
            "to_q",
            "to_k",
            "to_v",
            "0",
        )
        if is_conv or is_attn:
            yield path, module


@pytest.fixture(scope="module")
def locon(tiny_models, tmp_path_factory):
    from safetensors.torch import save_file

    pipe = tiny_models["sd1"].load()
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for path, module in _locon_modules(pipe.unet):
        stem = "lora_unet_" + path.replace(".", "_")
        if isinstance(module, torch.nn.Conv2d):
            down = (RANK, module.in_channels, *module.kernel_size)
            up = (module.out_channels, RANK, 1, 1)
        else:
            down, up = (RANK, module.in_features), (module.out_features, RANK)
        tensors[f"{stem}.lora_down.weight"] = torch.randn(down, generator=generator) * 0.2
        tensors[f"{stem}.lora_up.weight"] = torch.randn(up, generator=generator) * 0.2
        tensors[f"{stem}.alpha"] = torch.tensor(ALPHA)
    assert "lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight" in tensors
    path = tmp_path_factory.mktemp("locon") / "locon.safetensors"
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": "1.0",
        "ss_base_model_version": "sd_v1",
        "ss_network_args": '{"conv_dim": "2", "conv_alpha": "1"}',
        "ss_resolution": str(TRAINED_AT),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def _encoders(pipe):
    return [pipe.text_encoder]


def _reference(model, lora):
    pipe = model.load()
    pipe.load_lora_weights(str(lora))
    return unet_output(pipe, pipe.unet, _encoders(pipe), "sd1")[0]


def test_merge_of_an_sd1_locon_matches_diffusers_in_the_bases_dtype(
    tiny_models, locon, tmp_path, capsys
):
    from lorakit_sd.models import pipeline_class
    from safetensors.torch import load_file

    model = tiny_models["sd1"]
    merged = tmp_path / "merged.safetensors"
    code, out, err = _cli(
        capsys, "merge", "--base", model.single_file, "--lora", locon, "-o", merged
    )
    assert code == 0, err
    assert f"wrote {merged}" in out
    assert "float32 (the base's dtype)" in err and err.count("\n") == 1
    assert {v.dtype for v in load_file(str(merged)).values()} == {torch.float32}
    pipe = pipeline_class("sd1").from_single_file(
        str(merged), config=str(model.config_dir), local_files_only=True
    )
    got = unet_output(pipe, pipe.unet, _encoders(pipe), "sd1")[0]
    assert (got - _reference(model, locon)).abs().max().item() < 1e-4
    # --dtype still wins, and says so
    half = tmp_path / "half.safetensors"
    code, _, err = _cli(
        capsys,
        "merge",
        "--base",
        model.single_file,
        "--lora",
        locon,
        "-o",
        half,
        "--dtype",
        "float16",
    )
    assert code == 0 and "float16 (as --dtype asked)" in err
    assert {v.dtype for v in load_file(str(half)).values()} == {torch.float16}


def test_export_and_merge_take_base_config_and_config_offline(
    tiny_models, locon, tmp_path, capsys, monkeypatch
):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    model = tiny_models["sd1"]
    single = str(model.single_file)
    out = tmp_path / "x.diffusers.safetensors"
    code, _, err = _cli(capsys, "export", locon, "--to", "diffusers", "--base", single, "-o", out)
    assert code == 2 and "--base-config" in err and err.count("\n") == 1
    code, _, err = _cli(
        capsys,
        "export",
        locon,
        "--to",
        "diffusers",
        "--base",
        single,
        "-o",
        out,
        "--base-config",
        model.config_dir,
    )
    assert code == 0, err
    _, meta = lora_keys(out)
    assert "lora_adapter_metadata" in meta
    pipe = model.load()
    pipe.load_lora_weights(str(out))
    got = unet_output(pipe, pipe.unet, _encoders(pipe), "sd1")[0]
    assert (got - _reference(model, locon)).abs().max().item() < 1e-5
    # the same from a run's config (base model and sd.base_config in it), as train reads it
    config = write_config(
        tmp_path / "run.yaml",
        {
            "task_type": "image-generation",
            "base_model": single,
            "train_data_dir": str(tmp_path),
            "sd": {"base_config": str(model.config_dir)},
        },
    )
    again = tmp_path / "y.diffusers.safetensors"
    code, _, err = _cli(capsys, "export", locon, "--to", "diffusers", "-c", config, "-o", again)
    assert code == 0, err
    assert again.read_bytes() != b""
    code, _, err = _cli(capsys, "merge", "-c", config, "--lora", locon, "-o", tmp_path / "m.st")
    assert code == 2 and "must be a .safetensors file" in err  # --base came from the config


def test_validate_and_train_refuse_a_single_file_without_configs_at_once(
    tiny_models, tmp_path, capsys, monkeypatch
):
    import huggingface_hub.constants
    from lorakit_sd.testing import write_tiny_images

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    model = tiny_models["sd1"]
    data = write_tiny_images(tmp_path / "data", 2)
    config = write_config(
        tmp_path / "run.yaml",
        {
            "task_type": "image-generation",
            "base_model": str(model.single_file),
            "train_data_dir": str(data),
            "output_dir": str(tmp_path / "out"),
        },
    )
    code, out, err = _cli(capsys, "config", "validate", config)
    assert code == 2 and "ok" not in out
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "sd.base_config" in err
    assert "not in the local hub cache" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "train", "-c", config, "--no-progress")
    assert code == 2 and "not in the local hub cache" in err
    assert not (tmp_path / "out").exists()
    nowhere = tmp_path / "nowhere"
    code, _, err = _cli(capsys, "train", "-c", config, "--base-config", nowhere, "--no-progress")
    assert code == 2 and f"sd.base_config {nowhere}: folder not found" in err
    code, out, err = _cli(
        capsys, "config", "validate", config, "--set", f"sd.base_config={model.config_dir}"
    )
    assert code == 0 and "ok" in out, err


def test_sample_renders_at_the_loras_resolution_with_a_progress_bar(
    tiny_models, locon, tmp_path, capsys
):
    from PIL import Image

    model = tiny_models["sd1"]
    base = ["--base", model.diffusers_dir, "--lora", locon, "-p", "a cat", "--steps", "1"]
    code, _, err = _cli(capsys, "sample", *base, "-o", tmp_path / "a")
    assert code == 0, err
    assert Image.open(tmp_path / "a" / "locon-00.png").size == TRAINED_AT
    assert "1 prompt(s)" in err  # the progress bar
    code, _, err = _cli(
        capsys, "sample", *base, "-o", tmp_path / "b", "--width", "40", "--height", "24"
    )
    assert code == 0, err
    assert Image.open(tmp_path / "b" / "locon-00.png").size == (40, 24)
