"""The command line: train, export (both ways), merge and sample, and the one-line errors."""

from __future__ import annotations

import pytest
import torch
from lorakit_sd.testing import tiny_config, write_tiny_images
from sd_helpers import cli, lora_keys, unet_output

from lorakit.testing import write_config


def _write_config(path, model, data, output, **overrides):
    return write_config(path, tiny_config(model, data, output, **overrides))


def _encoders(pipe, family):
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])


@pytest.fixture(scope="module")
def sd1_cli_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model = tiny_models["sd1"]
    data = write_tiny_images(tmp / "data", 4)
    config = _write_config(
        tmp / "run.yaml",
        model,
        data,
        tmp / "out",
        max_steps=3,
        lora_alpha=8,
        learning_rate=1e-2,
        output_name="mascot",
    )
    assert cli("train", "--config", config, "--no-progress") == 0
    return model, tmp, config


def test_train_writes_both_formats(sd1_cli_run):
    _, tmp, _ = sd1_cli_run
    out = tmp / "out"
    assert (out / "mascot.safetensors").is_file() and (
        out / "mascot.diffusers.safetensors"
    ).is_file()
    assert (out / "config.yaml").is_file() and (out / "run.json").is_file()


@pytest.mark.parametrize("template", ["sd15", "sdxl"])
def test_config_init_writes_a_template_that_validates(tmp_path, template):
    path = tmp_path / f"{template}.yaml"
    assert cli("config", "init", "--backend", "sd", "--template", template, "-o", path) == 0
    assert "sd:" in path.read_text()
    assert cli("config", "validate", path, "--no-paths") == 0


def test_export_round_trip_is_exact(sd1_cli_run, capsys):
    from safetensors.torch import load_file

    model, tmp, _ = sd1_cli_run
    kohya = tmp / "out" / "mascot.safetensors"
    as_diffusers = tmp / "exported.diffusers.safetensors"
    back = tmp / "exported.safetensors"
    assert (
        cli("export", kohya, "--to", "diffusers", "-o", as_diffusers, "--base", model.diffusers_dir)
        == 0
    )
    assert cli("export", as_diffusers, "--to", "kohya", "--base", model.diffusers_dir) == 0
    assert back.is_file()
    original, again = load_file(str(kohya)), load_file(str(back))
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    _, meta = lora_keys(back)
    assert meta["ss_network_alpha"] == "8" and meta["ss_base_model_version"] == "sd_v1"
    # the converted diffusers file loads in diffusers with alpha kept
    pipe, reference = model.load(), model.load()
    pipe.load_lora_weights(str(as_diffusers))
    reference.load_lora_weights(str(kohya))
    got, _ = unet_output(pipe, pipe.unet, _encoders(pipe, "sd1"), "sd1")
    want, _ = unet_output(reference, reference.unet, _encoders(reference, "sd1"), "sd1")
    assert (got - want).abs().max().item() < 1e-6
    # without --base, keys are checked against the standard SD1.5 model: tiny shapes do not fit
    capsys.readouterr()
    assert cli("export", kohya, "--to", "diffusers", "-o", tmp / "x.safetensors") == 2
    err = capsys.readouterr().err
    assert "lorakit: error:" in err and "do not fit the model's weight" in err and err[-1] == "\n"


@pytest.mark.parametrize("form", ["single_file", "diffusers"])
def test_merge_bakes_the_lora_into_a_single_file(sd1_cli_run, form):
    from lorakit_sd.models import pipeline_class

    model, tmp, _ = sd1_cli_run
    kohya = tmp / "out" / "mascot.safetensors"
    merged = tmp / f"merged-{form}.safetensors"
    base = model.single_file if form == "single_file" else model.diffusers_dir
    code = cli(
        "merge",
        "--base",
        base,
        "--lora",
        f"{kohya}:0.5",
        "-o",
        merged,
        "--dtype",
        "float32",
    )
    assert code == 0
    pipe = pipeline_class("sd1").from_single_file(
        str(merged), config=str(model.config_dir), local_files_only=True
    )
    got, _ = unet_output(pipe, pipe.unet, _encoders(pipe, "sd1"), "sd1")
    reference = model.load()
    reference.load_lora_weights(str(kohya), adapter_name="mascot")
    reference.set_adapters(["mascot"], adapter_weights=[0.5])
    want, _ = unet_output(reference, reference.unet, _encoders(reference, "sd1"), "sd1")
    assert (got - want).abs().max().item() < 1e-4
    _, meta = lora_keys(merged)
    assert '"weight": 0.5' in meta["lorakit.merged_loras"]


def test_sample_with_two_loras_writes_images_and_a_sheet(sd1_cli_run):
    from PIL import Image

    model, tmp, config = sd1_cli_run
    out = tmp / "out"
    code = cli(
        "sample",
        "--config",
        config,
        "--base",
        model.diffusers_dir,
        "--lora",
        f"{out / 'mascot.safetensors'}:0.8",
        "--lora",
        f"{out / 'mascot.diffusers.safetensors'}:0.2",
        "-p",
        "a red cat",
        "-p",
        "a dog",
        "-o",
        tmp / "samples",
        "--steps",
        "2",
    )
    assert code == 0
    images = sorted((tmp / "samples").glob("*.png"))
    assert [p.name for p in images] == [
        "mascot+mascot-00.png",
        "mascot+mascot-01.png",
        "mascot+mascot.png",
    ]
    assert Image.open(images[0]).size == (32, 32)


def test_sample_refuses_keys_that_match_nothing(sd1_cli_run, capsys):
    from safetensors.torch import load_file, save_file

    model, tmp, config = sd1_cli_run
    tensors = load_file(str(tmp / "out" / "mascot.safetensors"))
    tensors["lora_unet_not_a_module.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_not_a_module.lora_up.weight"] = torch.zeros(8, 4)
    bad = tmp / "bad.safetensors"
    save_file(tensors, str(bad))
    capsys.readouterr()
    code = cli("sample", "--config", config, "--lora", bad, "-p", "x", "-o", tmp / "s2")
    assert code == 2
    assert "lora_unet_not_a_module" in capsys.readouterr().err


def test_bad_data_and_pickles_are_one_line_errors(tiny_models, tmp_path, capsys):
    model = tiny_models["sd1"]
    data = write_tiny_images(tmp_path / "data", 2)
    (data / "img_001.png").write_bytes(b"garbage")
    config = _write_config(tmp_path / "bad.yaml", model, data, tmp_path / "out")
    capsys.readouterr()
    assert cli("train", "--config", config, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "img_001.png" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    good = write_tiny_images(tmp_path / "good", 2)
    config = _write_config(tmp_path / "ckpt.yaml", model, good, tmp_path / "out2")
    assert cli("train", "--config", config, "--set", f"base_model={ckpt}", "--no-progress") == 2
    assert "--allow-unsafe-pickle" in capsys.readouterr().err


def test_sdxl_from_a_single_file_trains_and_merges_with_both_text_encoders(tiny_models, tmp_path):
    """The SDXL merge path: SGM UNet names and OpenCLIP's fused q/k/v in text encoder 2."""
    from lorakit_sd.models import pipeline_class

    model = tiny_models["sdxl"]
    data = write_tiny_images(tmp_path / "data", 4)
    config = _write_config(
        tmp_path / "xl.yaml",
        model,
        data,
        tmp_path / "out",
        single_file=True,
        max_steps=2,
        learning_rate=1e-2,
        lora_alpha=2,
        sd={"train_text_encoder": True},
    )
    assert cli("train", "--config", config, "--no-progress") == 0
    kohya = tmp_path / "out" / "out.safetensors"
    _, meta = lora_keys(kohya)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    merged = tmp_path / "merged.safetensors"
    assert (
        cli(
            "merge",
            "--base",
            model.single_file,
            "--lora",
            kohya,
            "-o",
            merged,
            "--dtype",
            "float32",
        )
        == 0
    )
    pipe = pipeline_class("sdxl").from_single_file(
        str(merged), config=str(model.config_dir), local_files_only=True
    )
    got, got_hidden = unet_output(pipe, pipe.unet, _encoders(pipe, "sdxl"), "sdxl")
    reference = model.load()
    reference.load_lora_weights(str(kohya))
    want, want_hidden = unet_output(reference, reference.unet, _encoders(reference, "sdxl"), "sdxl")
    assert (got_hidden - want_hidden).abs().max().item() < 1e-4
    assert (got - want).abs().max().item() < 1e-4
