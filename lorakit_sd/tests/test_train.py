"""Training through the real engine on tiny SD1 / SDXL models, and what the files hold.

Two runs are shared by most tests: SD1 from a single-file checkpoint (cached latents and
caption embeddings, previews, a mid-run checkpoint) and SDXL from a diffusers folder with
text-encoder LoRA (uncached captions). Each run overfits four images.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from lorakit_sd.testing import write_tiny_images
from sd_helpers import denoising_loss, first_losses, lora_keys, train_tiny, unet_output

STEPS = 20


@pytest.fixture(scope="module")
def sd1_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd1")
    data = write_tiny_images(tmp / "data", 4)
    result, cap = train_tiny(
        tmp,
        tiny_models["sd1"],
        data,
        single_file=True,
        capture=True,
        max_steps=STEPS,
        batch_size=4,
        learning_rate=1e-2,
        lora_alpha=8,
        save_steps=10,
        sample_prompts=["a red cat", "a dog"],
        sample_every_n_steps=10,
        sd={"min_snr_gamma": 5.0},
    )
    return tiny_models["sd1"], data, result, cap


@pytest.fixture(scope="module")
def sdxl_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl")
    data = write_tiny_images(tmp / "data", 4)
    result, cap = train_tiny(
        tmp,
        tiny_models["sdxl"],
        data,
        capture=True,
        max_steps=STEPS,
        batch_size=4,
        learning_rate=1e-2,
        lora_alpha=8,
        sample_prompts=["a red cat"],
        sd={"train_text_encoder": True},
    )
    return tiny_models["sdxl"], data, result, cap


@pytest.fixture(params=["sd1", "sdxl"])
def run(request):
    return request.getfixturevalue(f"{request.param}_run")


def test_loss_falls_when_overfitting_four_images(run):
    """The exported LoRA lowers the denoising error on the training images."""
    model, data, result, cap = run
    assert result.steps == STEPS and len(first_losses(result.output_dir)) == STEPS
    pipe = model.load()
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if model.family == "sdxl" else [])
    before = denoising_loss(pipe, pipe.unet, encoders, model.family, data)
    pipe.load_lora_weights(str(result.output_dir / "run.safetensors"))
    after = denoising_loss(pipe, pipe.unet, encoders, model.family, data)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("file", ["run.safetensors", "run.diffusers.safetensors"])
def test_diffusers_load_lora_weights_reproduces_the_trained_model(run, file):
    model, _, result, cap = run
    cap.unet.eval()
    for encoder in cap.text_encoders:
        encoder.eval()
    pipe = model.load()
    want, want_hidden = unet_output(pipe, cap.unet, cap.text_encoders, model.family)
    base, _ = unet_output(pipe, pipe.unet, cap.text_encoders, model.family)
    assert (want - base).abs().max() > 1e-3  # the LoRA changes the output
    pipe.load_lora_weights(str(result.output_dir / file))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if model.family == "sdxl" else [])
    got, got_hidden = unet_output(pipe, pipe.unet, encoders, model.family)
    assert (got - want).abs().max().item() < 1e-4
    assert (got_hidden - want_hidden).abs().max().item() < 1e-4


def _module_stems(model):
    """kohya stems of every module of the base model, named independently of lorakit."""
    from safetensors import safe_open

    pipe = model.load()
    if model.family == "sd1":
        stems = {"lora_unet_" + n.replace(".", "_") for n, _ in pipe.unet.named_modules()}
        stems |= {
            "lora_te_" + f"text_model.{n}".replace(".", "_")
            for n, _ in pipe.text_encoder.named_modules()
        }
        return stems
    with safe_open(str(model.single_file), framework="pt") as f:  # read back by diffusers
        keys = list(f.keys())
    unet_prefix, te1_prefix = "model.diffusion_model.", "conditioner.embedders.0.transformer."
    stems = {
        "lora_unet_" + k[len(unet_prefix) : -len(".weight")].replace(".", "_")
        for k in keys
        if k.startswith(unet_prefix) and k.endswith(".weight")
    }
    stems |= {
        "lora_te1_" + k[len(te1_prefix) : -len(".weight")].replace(".", "_")
        for k in keys
        if k.startswith(te1_prefix) and k.endswith(".weight")
    }
    stems |= {"lora_te2_" + n.replace(".", "_") for n, _ in pipe.text_encoder_2.named_modules()}
    return stems


def test_every_kohya_key_maps_to_a_module(run):
    model, _, result, _ = run
    keys, _ = lora_keys(result.output_dir / "run.safetensors")
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    assert len(keys) == 3 * len(stems)
    assert stems <= _module_stems(model), sorted(stems - _module_stems(model))[:3]
    prefixes = {s.split("_text_model")[0] for s in stems if "_text_model" in s}
    if model.family == "sd1":
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in stems
        assert not prefixes  # text encoder frozen in this run
    else:
        # original SGM names (tiny layout: one layer per block, so block 1 starts at 3)
        assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k" in stems
        assert "lora_unet_middle_block_1_transformer_blocks_1_attn1_to_out_0" in stems
        assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_v" in stems
        assert prefixes == {"lora_te1", "lora_te2"}
        assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in stems
    assert not any(
        s.startswith("lora_te_encoder") or "down_blocks" in s and model.family == "sdxl"
        for s in stems
    )


def test_kohya_tensors_and_metadata_match_the_format(run):
    from safetensors.torch import load_file

    model, _, result, _ = run
    path = result.output_dir / "run.safetensors"
    tensors = load_file(str(path))
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            assert value.ndim == 0 and value.item() == 8.0
        elif key.endswith(".lora_down.weight"):
            assert value.shape[0] == 4 and value.dtype == torch.float32
        else:
            assert key.endswith(".lora_up.weight") and value.shape[1] == 4
    _, meta = lora_keys(path)
    assert all(isinstance(v, str) for v in meta.values())
    expected = {
        "ss_network_dim": "4",
        "ss_network_alpha": "8",
        "ss_output_name": "run",
        "ss_steps": str(STEPS),
        "ss_epoch": str(STEPS),  # one batch of 4 per epoch
        "ss_base_model_version": {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}[model.family],
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": {
            "sd1": "stable-diffusion-v1/lora",
            "sdxl": "stable-diffusion-xl-v1-base/lora",
        }[model.family],
        "modelspec.title": "run",
        "modelspec.resolution": "32x32",
        "lorakit.backend": "sd",
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert int(meta["ss_training_started_at"]) > 1_600_000_000
    assert meta["modelspec.date"][:4].isdigit() and "lorakit.config_hash" in meta
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + n :]).hexdigest()


def test_checkpoints_and_samples(sd1_run):
    from PIL import Image

    _, _, result, _ = sd1_run
    step10 = result.output_dir / "checkpoints" / "step-10"
    assert (step10 / "run.safetensors").is_file() and (
        step10 / "run.diffusers.safetensors"
    ).is_file()
    _, meta = lora_keys(step10 / "run.safetensors")
    assert meta["ss_steps"] == "10"
    samples = result.output_dir / "samples"
    names = sorted(p.name for p in samples.glob("*.png"))
    assert names == [
        f"step-{step:06d}{suffix}.png" for step in (10, STEPS) for suffix in ("-00", "-01", "")
    ]
    image = Image.open(samples / names[3])
    assert image.size == (32, 32) and len(set(image.getdata())) > 1
    sheet = Image.open(samples / names[-1])
    assert sheet.width >= 2 * 32 and sheet.height > 32


def test_sdxl_previews(sdxl_run):
    from PIL import Image

    _, _, result, _ = sdxl_run
    image = Image.open(result.output_dir / "samples" / f"step-{STEPS:06d}-00.png")
    assert image.size == (32, 32) and len(set(image.getdata())) > 1


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cached_and_uncached_runs_give_the_same_first_loss(tiny_models, tmp_path, family):
    data = write_tiny_images(tmp_path / "data", 4, sizes=[(32, 32), (48, 32)])
    sd = {
        "caption_dropout": 0.5,
        "flip_aug": True,
        "noise_offset": 0.1,
        "min_snr_gamma": 5.0,
        "prediction_type": "v_prediction" if family == "sdxl" else "epsilon",
    }
    losses = {}
    for cached in (True, False):
        result, _ = train_tiny(
            tmp_path,
            tiny_models[family],
            data,
            output_dir=tmp_path / f"run-{cached}",
            max_steps=1,
            batch_size=2,
            trackers=["jsonl"],
            export_formats=["kohya"],
            sd={**sd, "cache_latents": cached, "cache_text_encoder_outputs": cached},
        )
        losses[cached] = first_losses(result.output_dir)[0]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)


def test_resume_continues_exactly(tiny_models, tmp_path):
    """A run resumed from its step-2 checkpoint ends with the same LoRA as the whole run.

    Only the resumed run renders previews (after every step): they must not change training.
    """
    from safetensors.torch import load_file

    data = write_tiny_images(tmp_path / "data", 4, sizes=[(32, 32), (48, 32)])
    sd = {"caption_dropout": 0.3, "flip_aug": True, "noise_offset": 0.05}
    common = {
        "max_steps": 4,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "export_formats": ["kohya"],
        "sd": sd,
    }
    whole, _ = train_tiny(
        tmp_path, tiny_models["sd1"], data, output_dir=tmp_path / "whole", save_steps=2, **common
    )
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.engine.manifest import write_manifest
    from lorakit.plugins import build_plugins, set_plugins

    # the run first started long ago: a resume keeps that start (ss_training_started_at)
    state_file = whole.output_dir / "checkpoints" / "step-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["started_at"] > 1.7e9
    state_file.write_text(json.dumps({**state, "started_at": 1e9}))
    write_manifest(state_file.parent)  # an edit the checkpoint's manifest vouches for
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    try:
        config = load_config(
            data=tiny_config(
                tiny_models["sd1"],
                data,
                tmp_path / "resumed",
                save_steps=2,
                sample_prompts=["a cat"],
                sample_every_n_steps=1,
                **common,
            ),
            registries=plugins.registries,
        )
        resumed = train(
            config,
            resume=str(whole.output_dir / "checkpoints" / "step-2"),
            plugins=plugins,
            progress=False,
        )
    finally:
        set_plugins(None)
    assert resumed.steps == 4
    assert (resumed.output_dir / "samples" / "step-000003.png").is_file()
    a = load_file(str(whole.output_dir / "whole.safetensors"))
    b = load_file(str(resumed.output_dir / "resumed.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first_losses(whole.output_dir)[2:] == first_losses(resumed.output_dir)[-2:]
    _, meta = lora_keys(resumed.output_dir / "resumed.safetensors")
    assert meta["ss_training_started_at"] == "1000000000"
    assert int(meta["ss_training_finished_at"]) > 1.7e9
    run = json.loads((resumed.output_dir / "run.json").read_text())
    assert run["started_at"] == "2001-09-09T01:46:40+00:00"


def test_gradient_checkpointing_trains_every_lora(tiny_models, tmp_path):
    """With checkpointing on, every LoRA (UNet and both SDXL text encoders) gets gradients."""
    from safetensors.torch import load_file

    data = write_tiny_images(tmp_path / "data", 2)
    result, _ = train_tiny(
        tmp_path,
        tiny_models["sdxl"],
        data,
        max_steps=1,
        export_formats=["kohya"],
        gradient_checkpointing=True,
        sd={"train_text_encoder": True},
    )
    tensors = load_file(str(result.output_dir / "run.safetensors"))
    ups = {k: v for k, v in tensors.items() if k.endswith("lora_up.weight")}
    assert {k.split("_text_model")[0] for k in ups if "_text_model" in k} == {
        "lora_te1",
        "lora_te2",
    }
    assert all(v.abs().sum() > 0 for v in ups.values()), [
        k for k, v in ups.items() if v.abs().sum() == 0
    ][:3]
