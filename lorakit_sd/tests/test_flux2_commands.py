"""FLUX.2 from the files ComfyUI users keep, and the commands on its LoRAs, judged by diffusers.

Split files: the transformer in BFL's layout (bf16, and fp8 "scaled" with per-tensor scales)
beside its text encoder and VAE files; ``sd.base_config`` gives the configs and tokenizer and
is a *different* stand-in (other seeds), so every weight that matches proves where it came
from. ``merge`` is judged by ``Flux2Transformer2DModel.from_single_file`` against diffusers'
``load_lora_weights``; ``sample`` by the pipeline; ``inspect`` through the CLI; the generic
``sd.group_offload`` by autograd on a parked (NaN) copy and by the CPU refusal.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from flow_helpers import train
from flux2_helpers import velocity
from lorakit_sd.testing import write_tiny_images

from lorakit.api import ConfigError, UsageError
from lorakit.testing import run_cli

CAPTIONS = ["a red cat", "a dog in the park"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from lorakit_sd.families.flux2.standin import build_tiny_flux2

    root = tmp_path_factory.mktemp("flux2-files")
    return build_tiny_flux2(root / "seed0", "flux2"), build_tiny_flux2(root / "seed1", "flux2", 1)


def _split_dir(model, where, fp8=False):
    """The transformer file (bf16, or fp8 with scales) beside the text encoder and VAE."""
    from safetensors.torch import load_file, save_file

    where.mkdir(parents=True)
    state = load_file(str(model.single_file))
    if fp8:
        out = {}
        for key, value in state.items():
            if value.ndim == 2:
                scale = value.abs().max() / 448
                out[key] = (value / scale).to(torch.float8_e4m3fn)
                out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
            else:
                out[key] = value.to(torch.bfloat16)
        out["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    else:
        out = {k: v.to(torch.bfloat16) for k, v in state.items()}
    save_file(out, str(where / "flux2_dev.safetensors"), metadata={"format": "pt"})
    shutil.copy(model.text_encoder_file, where / "mistral_3_small_flux2.safetensors")
    shutil.copy(model.vae_file, where / "flux2-vae.safetensors")
    return where / "flux2_dev.safetensors", out


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


@pytest.fixture(scope="module")
def split_run(model, tmp_path_factory):
    """Two training steps from the split files (configs from the other stand-in)."""
    seed0, seed1 = model
    tmp = tmp_path_factory.mktemp("split")
    path, _ = _split_dir(seed0, tmp / "models")
    data = write_tiny_images(tmp / "data", 2)
    result, cap = train(
        tmp,
        seed0,
        data,
        base_model=str(path),
        max_steps=2,
        learning_rate=1e-2,
        sd={"base_config": str(seed1.diffusers_dir)},
    )
    return path, result, cap


def test_split_files_load_each_part_from_its_file(model, split_run):
    from lorakit_sd.models import load_base

    seed0, seed1 = model
    path, result, _ = split_run
    assert result.steps == 2
    loaded = load_base(str(path), base_config=str(seed1.diffusers_dir)).pipe
    assert loaded.transformer.dtype == torch.bfloat16  # the file's dtype, never a float32 copy
    want = seed0.load()
    assert _same(loaded.text_encoder, want.text_encoder)  # the file beside, not base_config's
    assert _same(loaded.vae, want.vae)
    other = seed1.load()
    assert not _same(loaded.vae, other.vae)
    bf16 = {k: v.to(torch.bfloat16).float() for k, v in want.transformer.state_dict().items()}
    got = loaded.transformer.state_dict()
    assert all(torch.equal(got[k].float(), bf16[k]) for k in bf16)


def test_a_bf16_folder_loads_in_bf16_and_trains(model, tmp_path):
    """The 32B transformer and 24B encoder are never copied to float32 in CPU memory: a
    folder stored in bf16 loads in bf16 (the run then casts to its own dtype)."""
    from lorakit_sd.models import load_base

    seed0, _ = model
    folder = tmp_path / "bf16"
    seed0.load().to(torch.bfloat16).save_pretrained(folder)
    pipe = load_base(str(folder)).pipe
    assert {pipe.transformer.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    data = write_tiny_images(tmp_path / "data", 2)
    result, _ = train(tmp_path, seed0, data, base_model=str(folder), max_steps=1)
    assert result.steps == 1


def test_an_fp8_scaled_file_is_dequantized_with_its_scales(model, tmp_path):
    from diffusers.loaders.single_file_utils import (
        convert_flux2_transformer_checkpoint_to_diffusers,
    )
    from lorakit_sd.models import load_base

    seed0, seed1 = model
    path, stored = _split_dir(seed0, tmp_path / "fp8", fp8=True)
    loaded = load_base(str(path), base_config=str(seed1.diffusers_dir)).pipe.transformer
    expect = {}
    for key, value in stored.items():
        if key.endswith(".scale_weight") or key == "scaled_fp8":
            continue
        scale = stored.get(key.removesuffix(".weight") + ".scale_weight")
        full = value.float() * scale.float() if scale is not None else value.float()
        expect[key] = full.to(torch.bfloat16)
    expect = convert_flux2_transformer_checkpoint_to_diffusers(expect)  # diffusers' own names
    got = loaded.state_dict()
    assert expect.keys() == got.keys()
    assert all(torch.equal(got[k].to(torch.bfloat16), expect[k]) for k in expect)


def test_a_missing_part_is_one_line_naming_it(model, tmp_path):
    from lorakit_sd.models import load_base

    seed0, _ = model
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(seed0.single_file, alone / "flux2_dev.safetensors")
    config = tmp_path / "config"
    shutil.copytree(seed0.diffusers_dir, config)
    shutil.rmtree(config / "text_encoder")
    with pytest.raises(UsageError, match=r"its text encoder is missing: put its .safetensors"):
        load_base(str(alone / "flux2_dev.safetensors"), base_config=str(config))


# -- commands on the LoRA --------------------------------------------------------------------


def test_inspect_names_the_comfyui_layout(split_run, capsys):
    _, result, _ = split_run
    code, out, err = run_cli(capsys, "inspect", result.output_dir / "run.safetensors")
    assert code == 0, err
    assert "ComfyUI / musubi-tuner FLUX.2 LoRA (kohya names, BFL layout)" in out
    assert "fused layer" in out
    code, out, _ = run_cli(capsys, "inspect", result.output_dir / "run.diffusers.safetensors")
    assert code == 0 and "diffusers" in out


def test_flux1_files_are_not_described_as_flux2():
    """Both families write ``lora_unet_double_blocks_*``: FLUX.1's files (attention only, or
    sd-scripts' every layer with the modulations) stay FLUX.1's."""
    from lorakit_sd.families.flux2 import describe_file

    def names(*stems):
        return [f"lora_unet_{s}.{t}" for s in stems for t in ("lora_down.weight", "alpha")]

    attn = (
        "double_blocks_0_img_attn_qkv",
        "double_blocks_0_img_attn_proj",
        "single_blocks_0_linear1",
    )
    assert describe_file(names(*attn)) is None
    everything = (*attn, "single_blocks_0_linear2", "double_blocks_0_img_mod_lin")
    assert describe_file(names(*everything)) is None
    assert describe_file(names(*attn, "single_blocks_0_linear2")) is not None  # FLUX.2's attn


def test_merge_writes_the_bfl_file_diffusers_loads(model, split_run, tmp_path):
    """The merged file is in the base's BFL layout, and ``from_single_file`` of it predicts
    what the base with the LoRA loaded by ``load_lora_weights`` predicts."""
    from diffusers import Flux2Transformer2DModel
    from lorakit_sd.commands.merge import merge_checkpoint
    from lorakit_sd.config import SDSection
    from safetensors import safe_open

    seed0, seed1 = model
    path, result, _ = split_run
    lora = result.output_dir / "run.safetensors"
    out = merge_checkpoint(
        str(path),
        [(str(lora), 0.7)],
        tmp_path / "merged.safetensors",
        section=SDSection(base_config=str(seed1.diffusers_dir)),
    )
    with safe_open(str(out), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        dtype = f.get_tensor("img_in.weight").dtype
    with safe_open(str(path), framework="pt") as f:
        assert keys == set(f.keys())  # every tensor of the base, in its layout
    assert dtype == torch.bfloat16 and meta["modelspec.architecture"] == "Flux.2-dev"
    merged = Flux2Transformer2DModel.from_single_file(
        str(out), config=str(seed0.diffusers_dir), subfolder="transformer", local_files_only=True
    ).float()
    pipe = seed0.load()
    pipe.transformer = Flux2Transformer2DModel.from_single_file(
        str(path), config=str(seed0.diffusers_dir), subfolder="transformer", local_files_only=True
    ).float()
    pipe.load_lora_weights(str(lora), adapter_name="x")
    pipe.set_adapters(["x"], [0.7])
    x = torch.randn(2, 128, 8, 8, generator=torch.Generator().manual_seed(5))
    want = velocity(pipe, pipe.transformer, x, CAPTIONS)
    got = velocity(pipe, merged, x, CAPTIONS)
    assert (got - want).abs().max().item() < 2e-2 * want.abs().max().item()  # bf16 file


def test_merge_into_a_diffusers_folder_keeps_its_names(model, split_run, tmp_path):
    """A diffusers base gets the file its ``transformer/`` folder holds: the pipeline loads
    it in place of the original and predicts what ``load_lora_weights`` gives."""
    from diffusers import Flux2Pipeline
    from lorakit_sd.commands.merge import merge_checkpoint

    seed0, _ = model
    _, result, _ = split_run
    lora = result.output_dir / "run.diffusers.safetensors"
    out = merge_checkpoint(str(seed0.diffusers_dir), [(str(lora), 1.0)], tmp_path / "m.safetensors")
    folder = tmp_path / "merged"
    shutil.copytree(seed0.diffusers_dir, folder)
    [weights] = (folder / "transformer").glob("*.safetensors")
    shutil.copy(out, weights)
    merged = Flux2Pipeline.from_pretrained(folder)
    pipe = seed0.load()
    pipe.load_lora_weights(str(lora))
    x = torch.randn(2, 128, 8, 8, generator=torch.Generator().manual_seed(6))
    want = velocity(pipe, pipe.transformer, x, CAPTIONS)
    assert (velocity(pipe, merged.transformer, x, CAPTIONS) - want).abs().max() < 1e-5


def test_sample_renders_with_the_pipeline(model, split_run, tmp_path):
    import numpy as np
    from lorakit_sd.commands.sample import sample
    from PIL import Image

    seed0, _ = model
    _, result, _ = split_run
    images = {}
    for name, loras in (
        ("base", []),
        ("lora", [(str(result.output_dir / "run.safetensors"), 1.0)]),
    ):
        paths = sample(
            str(seed0.diffusers_dir),
            loras,
            ["a red cat"],
            tmp_path / name,
            seed=3,
            steps=2,
            width=32,
            height=32,
        )
        with Image.open(next(p for p in paths if "sheet" not in p.name)) as im:
            images[name] = np.asarray(im.convert("RGB"), dtype=int)
    pipe = seed0.load()
    theirs = pipe(
        prompt="a red cat",
        num_inference_steps=2,
        guidance_scale=7.0,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert np.abs(images["base"] - np.asarray(theirs, dtype=int)).max() <= 1
    assert np.abs(images["lora"] - images["base"]).max() > 0


# -- sd.group_offload (generic) --------------------------------------------------------------


def test_group_offload_trains_exactly_from_parked_weights(model):
    """Parked weights are NaN here: the step's output and LoRA gradients equal a run without
    offloading (backward never reads a parked weight), LoRA parameters stay put, and after
    the step at most one block's weights are on the device."""
    from lorakit_sd.step.offload import offload_blocks
    from peft import LoraConfig

    seed0, _ = model

    def step(offload):
        transformer = seed0.load().transformer
        transformer.requires_grad_(False)
        config = LoraConfig(
            r=2, lora_alpha=2, target_modules=["to_q", "to_qkv_mlp_proj"], init_lora_weights=False
        )
        torch.manual_seed(0)
        transformer.add_adapter(config)
        transformer.enable_gradient_checkpointing()
        if offload:
            offload_blocks(transformer, "cpu", park=lambda home: torch.full_like(home, torch.nan))
            transformer.to("cpu")  # what accelerate's prepare does: parked weights stay parked
        torch.manual_seed(1)
        x, hidden = torch.randn(1, 128, 4, 4), torch.randn(1, 6, 24)
        from diffusers import Flux2Pipeline

        out = transformer(
            hidden_states=Flux2Pipeline._pack_latents(x),
            timestep=torch.tensor([0.5]),
            guidance=torch.ones(1),
            encoder_hidden_states=hidden,
            img_ids=Flux2Pipeline._prepare_latent_ids(x),
            txt_ids=Flux2Pipeline._prepare_text_ids(hidden),
            return_dict=False,
        )[0]
        out.square().mean().backward()
        grads = {n: p.grad for n, p in transformer.named_parameters() if p.requires_grad}
        return transformer, out.detach(), grads

    _, want, want_grads = step(False)
    transformer, got, grads = step(True)
    assert torch.equal(got, want) and grads.keys() == want_grads.keys()
    assert all(torch.equal(grads[k], want_grads[k]) for k in grads)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    onloaded = [
        b for b in blocks if not all(p.isnan().all() for p in b.parameters() if not p.requires_grad)
    ]
    assert len(onloaded) <= 1 < len(blocks)


def test_group_offload_streams_the_caption_encoder(model):
    """Forward only (the caption cache): the embeddings from parked (NaN) layers equal the
    plain encoder's, and ``.to()`` leaves its layers parked."""
    from lorakit_sd.step.offload import offload_blocks

    seed0, _ = model
    pipe = seed0.load()
    want, _ = pipe.encode_prompt(CAPTIONS, max_sequence_length=16)
    offload_blocks(
        pipe.text_encoder, "cpu", lambda home: torch.full_like(home, torch.nan), checkpointing=False
    )
    pipe.text_encoder.to("cpu")
    got, _ = pipe.encode_prompt(CAPTIONS, max_sequence_length=16)
    assert torch.equal(got, want)
    assert not pipe.text_encoder.is_gradient_checkpointing


def test_group_offload_is_refused_on_cpu_before_the_model_loads(model, tmp_path, capsys):
    seed0, _ = model
    data = write_tiny_images(tmp_path / "data", 2)
    with pytest.raises(
        ConfigError, match=r"^sd.group_offload: streams the transformer's blocks .* CUDA GPU"
    ):
        train(tmp_path, seed0, data, max_steps=1, sd={"group_offload": True})
    with pytest.raises(ConfigError, match="does not combine with sd.base_quantization"):
        train(
            tmp_path,
            seed0,
            data,
            max_steps=1,
            sd={"group_offload": True, "base_quantization": "fp8"},
        )


def test_plan_ladder_offers_group_offload_and_counts_it(model, tmp_path):
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.planning import make_plan
    from lorakit.plugins import build_plugins, set_plugins

    seed0, _ = model
    data = write_tiny_images(tmp_path / "data", 2)
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    try:
        plans = {}
        for offload in (False, True):
            cfg = tiny_config(
                seed0,
                data,
                tmp_path / "p",
                sd={"max_sequence_length": 16, "group_offload": offload},
                gradient_checkpointing=True,
            )
            config = load_config(data=cfg, registries=plugins.registries)
            plans[offload] = make_plan(config, ladder=False, both=False)
    finally:
        set_plugins(None)
    rows = [changes for changes, _ in plans[False].model.rungs]
    offload = {"sd.group_offload": True, "sd.base_quantization": None}
    assert {**offload, "gradient_checkpointing": True} in rows, rows
    assert not any("sd.group_offload" in r for r, _ in plans[True].model.rungs)
    transformer = seed0.load().transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    parked = (sum(sizes) - max(sizes)) * 4  # float32 weights (mixed_precision: no)
    assert plans[False].estimate.frozen - plans[True].estimate.frozen == parked
    assert "FLUX.2 transformer" in plans[False].model.description
