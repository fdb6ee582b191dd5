"""FLUX.1 and SD3 through the real engine on tiny random models, judged by diffusers.

Two runs are shared: FLUX.1-dev (guidance embedding) and SD3, each overfitting four images
with previews. The files they write are loaded by ``FluxPipeline`` /
``StableDiffusion3Pipeline.load_lora_weights``; the kohya/BFL FLUX.1 file is converted back
and must reproduce the in-memory transformer; the flow-matching draw is checked against
diffusers' ``training_utils`` and the formulas of the SD3 paper and FLUX.1's scheduler.
"""

from __future__ import annotations

import math

import pytest
import torch
from flow_helpers import SD as FLOW_SD
from flow_helpers import assert_resumes_exactly, overfit, train, transformer_output
from lorakit_sd.testing import write_tiny_images
from sd_helpers import first_losses, lora_keys

STEPS = 20
SD = FLOW_SD
_train = train


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory):
    from lorakit_sd.families.transformer_standin import build_tiny_flow

    from lorakit.testing import one_thread

    root = tmp_path_factory.mktemp("flow")
    with one_thread():
        return {f: build_tiny_flow(root / f, f) for f in ("flux1", "sd3")}


def _run(flow_models, tmp_path_factory, family, **extra):
    data, result, cap = overfit(
        tmp_path_factory.mktemp(family), flow_models[family], STEPS, **extra
    )
    return flow_models[family], data, result, cap


@pytest.fixture(scope="module")
def flux_run(flow_models, tmp_path_factory):
    return _run(flow_models, tmp_path_factory, "flux1", sd={"loss_weighting": "cosmap"})


@pytest.fixture(scope="module")
def sd3_run(flow_models, tmp_path_factory):
    return _run(flow_models, tmp_path_factory, "sd3")


@pytest.fixture(params=["flux1", "sd3"])
def run(request):
    return request.getfixturevalue(f"{'flux' if request.param == 'flux1' else 'sd3'}_run")


# -- what diffusers computes, written against its pipelines ---------------------------------


def flow_loss(pipe, transformer, data):
    """Mean flow-matching error (target ε - x0) on the training images at fixed σ and noise."""
    import csv

    from lorakit_sd.data.buckets import load_pixels

    with open(data / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pixels = torch.stack([load_pixels(str(data / r["file_name"]), (32, 32)) for r in rows])
    with torch.no_grad():
        mean = pipe.vae.encode(pixels).latent_dist.mean
    cfg = pipe.vae.config
    x0 = (mean - cfg.shift_factor) * cfg.scaling_factor
    total = 0.0
    for i, sigma in enumerate((0.2, 0.4, 0.6, 0.8)):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
        noisy = (1 - sigma) * x0 + sigma * noise
        pred = transformer_output(pipe, transformer, noisy, sigma, [r["text"] for r in rows])
        total += torch.nn.functional.mse_loss(pred, noise - x0).item()
    return total / 4


def _injected(transformer):
    return sum(1 for name, _ in transformer.named_modules() if name.endswith(".lora_A"))


# -- training and files ---------------------------------------------------------------------


def test_loss_falls_and_the_diffusers_file_loads(run):
    """The diffusers-format file, loaded by the diffusers pipeline, lowers the flow loss."""
    model, data, result, _ = run
    assert result.steps == STEPS and len(first_losses(result.output_dir)) == STEPS
    pipe = model.load()
    before = flow_loss(pipe, pipe.transformer, data)
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    after = flow_loss(pipe, pipe.transformer, data)
    assert after < 0.9 * before, (before, after)


def test_diffusers_file_reproduces_the_in_memory_transformer(run):
    model, _, result, cap = run
    cap.unet.eval()
    pipe = model.load()
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    captions = ["a red cat", "a dog, park"]
    want = transformer_output(pipe, cap.unet, x, 0.5, captions)
    base = transformer_output(pipe, pipe.transformer, x, 0.5, captions)
    assert (want - base).abs().max() > 1e-3
    path = result.output_dir / "run.diffusers.safetensors"
    keys, meta = lora_keys(path)
    assert all(k.startswith("transformer.") for k in keys)
    pipe.load_lora_weights(str(path))
    # diffusers drops keys it cannot place without a word: every module must arrive
    assert _injected(pipe.transformer) == len(keys) // 2 == _injected(cap.unet)
    got = transformer_output(pipe, pipe.transformer, x, 0.5, captions)
    assert (got - want).abs().max().item() < 1e-5
    arch = meta["modelspec.architecture"]
    assert arch == (
        "flux-1-dev/lora" if model.family == "flux1" else "stable-diffusion-3-medium/lora"
    )
    assert "modelspec.prediction_type" not in meta  # as sd-scripts writes FLUX.1 files


def test_previews_render(run):
    _, _, result, _ = run
    from PIL import Image

    sheet = result.output_dir / "samples" / f"step-{STEPS:06d}.png"
    with Image.open(sheet) as im:
        assert im.width >= 32 and im.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_flux_kohya_file_is_exact_and_converts_back(flux_run, tmp_path):
    """BFL names with q/k/v fused at rank 3r (block-diagonal up) that convert back exactly."""
    from lorakit_sd.commands.export import export
    from safetensors.torch import load_file

    model, _, result, cap = flux_run
    cap.unet.eval()
    kohya = result.output_dir / "run.safetensors"
    tensors = load_file(str(kohya))
    keys, meta = lora_keys(kohya)
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["sshs_model_hash"]
    r, hidden = 4, 32
    down = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    up = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    assert tuple(down.shape) == (3 * r, hidden) and tuple(up.shape) == (3 * hidden, 3 * r)
    assert float(tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 8 * 3
    for i in range(3):  # block-diagonal: q's rows read only q's columns, and so on
        rows = up[i * hidden : (i + 1) * hidden]
        off = torch.cat([rows[:, : i * r], rows[:, (i + 1) * r :]], dim=1)
        assert off.abs().max() == 0
    # the exact product: the fused update is q, k, v's updates stacked
    attn = cap.unet.transformer_blocks[0].attn
    want = torch.cat([_delta(getattr(attn, n)) for n in ("to_q", "to_k", "to_v")])
    got = (up.float() @ down.float()) * (24 / (3 * r))
    assert torch.allclose(got, want, atol=1e-6)
    linear1 = tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert tuple(linear1.shape) == (3 * hidden + 4 * hidden, 3 * r)  # MLP rows stay zero
    assert linear1[3 * hidden :].abs().max() == 0
    back = export(kohya, "diffusers", tmp_path / "back.safetensors", str(model.diffusers_dir))[0]
    pipe = model.load()
    pipe.load_lora_weights(str(back))
    assert _injected(pipe.transformer) == _injected(cap.unet)
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    want_out = transformer_output(pipe, cap.unet, x, 0.3, ["a cat", "a dog"])
    got_out = transformer_output(pipe, pipe.transformer, x, 0.3, ["a cat", "a dog"])
    assert (got_out - want_out).abs().max().item() < 1e-5


def _delta(layer):
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return (b @ a).detach() * layer.scaling["default"]


def test_a_dense_fused_lora_splits_exactly():
    """A rank-r LoRA trained on the fused layer (as sd-scripts does) splits without loss."""
    from lorakit_sd.families.flux1.kohya import split

    down, up = torch.randn(4, 8), torch.randn(24, 4)
    parts = split(down, up, 2.0, [8, 8, 8])
    whole = up @ down * (2.0 / 4)
    rebuilt = torch.cat([u @ d * (a / d.shape[0]) for d, u, a in parts])  # type: ignore[misc]
    assert torch.allclose(rebuilt, whole, atol=1e-6)


# -- ComfyUI's key mapping (comfy/lora.py, comfy/utils.py flux_to_diffusers) ----------------


def comfy_flux_map(config):
    """diffusers transformer key -> (BFL key, (dim, start, rows) or None), per ComfyUI's table."""
    h = config.num_attention_heads * config.attention_head_dim
    out = {}
    for i in range(config.num_layers):
        src, dst = f"transformer_blocks.{i}", f"diffusion_model.double_blocks.{i}"
        for j, n in enumerate(("to_q", "to_k", "to_v")):
            out[f"{src}.attn.{n}"] = (f"{dst}.img_attn.qkv.weight", (0, j * h, h))
        for j, n in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            out[f"{src}.attn.{n}"] = (f"{dst}.txt_attn.qkv.weight", (0, j * h, h))
        for a, b in (
            ("attn.to_out.0", "img_attn.proj"),
            ("attn.to_add_out", "txt_attn.proj"),
            ("ff.net.0.proj", "img_mlp.0"),
            ("ff.net.2", "img_mlp.2"),
            ("ff_context.net.0.proj", "txt_mlp.0"),
            ("ff_context.net.2", "txt_mlp.2"),
            ("norm1.linear", "img_mod.lin"),
            ("norm1_context.linear", "txt_mod.lin"),
        ):
            out[f"{src}.{a}"] = (f"{dst}.{b}.weight", None)
    for i in range(config.num_single_layers):
        src, dst = f"single_transformer_blocks.{i}", f"diffusion_model.single_blocks.{i}"
        for j, n in enumerate(("to_q", "to_k", "to_v")):
            out[f"{src}.attn.{n}"] = (f"{dst}.linear1.weight", (0, j * h, h))
        out[f"{src}.proj_mlp"] = (f"{dst}.linear1.weight", (0, 3 * h, 4 * h))
        out[f"{src}.proj_out"] = (f"{dst}.linear2.weight", None)
        out[f"{src}.norm.linear"] = (f"{dst}.modulation.lin.weight", None)
    return out


def test_comfyui_maps_every_key_of_our_flux_files(flux_run):
    model, _, result, cap = flux_run
    table = comfy_flux_map(cap.unet.config)
    bfl_keys = {k for k, _ in table.values()}
    # diffusers format: ComfyUI reads "transformer.<diffusers path>" through the table
    keys, _ = lora_keys(result.output_dir / "run.diffusers.safetensors")
    for key in keys:
        stem = key.removeprefix("transformer.").rsplit(".lora_", 1)[0]
        assert stem in table, key
    # kohya format: "lora_unet_<BFL path with _>" of a BFL weight (ComfyUI's generic rule)
    keys, _ = lora_keys(result.output_dir / "run.safetensors")
    rule = {
        "lora_unet_" + k[len("diffusion_model.") : -len(".weight")].replace(".", "_"): k
        for k in bfl_keys
    }
    for key in keys:
        stem = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        assert stem in rule, key


def test_comfyui_maps_every_key_of_our_sd3_file(sd3_run):
    """SD3: ComfyUI reads ``transformer.<diffusers path>`` (its MMDiT table is keyed so)."""
    _, _, result, cap = sd3_run
    weights = set(cap.unet.state_dict())
    keys, _ = lora_keys(result.output_dir / "run.diffusers.safetensors")
    for key in keys:
        stem = key.removeprefix("transformer.").rsplit(".lora_", 1)[0]
        assert f"{stem}.base_layer.weight" in weights, key
    assert not (result.output_dir / "run.safetensors").exists()  # no kohya layout for SD3


# -- the objective against diffusers and the formulas -----------------------------------------


@pytest.mark.parametrize("family", ["flux1", "sd3"])
@pytest.mark.parametrize("sampling", ["logit_normal", "uniform", "mode", "sigmoid"])
def test_flow_draw_matches_diffusers_and_the_formulas(flow_models, family, sampling):
    from diffusers.training_utils import (
        compute_density_for_timestep_sampling,
        compute_loss_weighting_for_sd3,
    )
    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    sec = SDSection(timestep_sampling=sampling, loss_weighting="cosmap", logit_mean=0.1)
    pipe_scheduler = type("P", (), {})()
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe_scheduler.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        flow_models[family].diffusers_dir, subfolder="scheduler"
    )
    objective = families.get(family).objective(pipe_scheduler, sec)
    x0 = torch.randn(6, 16, 8, 8)
    torch.manual_seed(3)
    draw = objective.draw(x0)
    torch.manual_seed(3)
    noise = torch.randn(x0.shape)
    if sampling == "sigmoid":
        u = torch.sigmoid(torch.randn(6))
    else:
        u = compute_density_for_timestep_sampling(sampling, 6, 0.1, 1.0, 1.29)
    if family == "sd3":  # SD3: the config's fixed shift 3.0
        sigma = 3.0 * u / (1 + 2.0 * u)
    else:  # FLUX.1: mu linear in the image's token count (8*8/4 = 16 tokens), exp time shift
        m = (1.15 - 0.5) / (4096 - 256)
        mu = 0.5 + m * (16 - 256)
        sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    assert torch.allclose(draw.sigmas, sigma, atol=1e-6)
    assert torch.allclose(draw.timesteps, sigma * 1000, atol=1e-3)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(draw.noisy, (1 - s) * x0 + s * noise, atol=1e-6)
    assert torch.equal(draw.target, noise - x0)
    want = 2 / (math.pi * (1 - 2 * s + 2 * s**2))
    assert torch.allclose(draw.weight, want, atol=1e-6)
    assert torch.allclose(draw.weight, compute_loss_weighting_for_sd3("cosmap", s))


@pytest.mark.parametrize(
    "key,value",
    [("min_snr_gamma", 5.0), ("noise_offset", 0.05), ("prediction_type", "v_prediction")],
)
def test_ddpm_options_are_refused_for_flow_families(flow_models, tmp_path, key, value):
    from lorakit.api import ConfigError

    data = write_tiny_images(tmp_path / "data", 2)
    with pytest.raises(ConfigError, match=f"FLUX.1 trains with flow matching; sd.{key}"):
        _train(tmp_path, flow_models["flux1"], data, max_steps=1, sd={key: value})


def test_flux_resume_continues_exactly(flow_models, tmp_path):
    assert_resumes_exactly(tmp_path, flow_models["flux1"])


def test_plan_traces_the_flux_transformer(flux_run, tmp_path):
    """``lorakit plan`` counts exactly the LoRA the real run trained, and predicts a peak."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.planning import make_plan
    from lorakit.plugins import build_plugins, set_plugins

    model, data, _, cap = flux_run
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    try:
        cfg = tiny_config(model, data, tmp_path / "p", sd=dict(SD), gradient_checkpointing=True)
        plan = make_plan(load_config(data=cfg, registries=plugins.registries), ladder=False)
    finally:
        set_plugins(None)
    trained = sum(p.numel() for p in cap.unet.parameters() if p.requires_grad)
    assert plan.estimate.trainable_params == trained
    assert plan.estimate.activations > 0 and "FLUX.1 transformer" in plan.model.description


def test_flux_clip_lora_loads_in_diffusers_and_t5_is_never_adapted(flow_models, tmp_path):
    model = flow_models["flux1"]
    data = write_tiny_images(tmp_path / "data", 2)
    result, cap = _train(
        tmp_path,
        model,
        data,
        max_steps=2,
        batch_size=2,
        export_formats=["diffusers"],
        sd={"train_text_encoder": True},
    )
    keys, _ = lora_keys(result.output_dir / "run.diffusers.safetensors")
    te = [k for k in keys if k.startswith("text_encoder.")]
    assert te and not [k for k in keys if k.startswith("text_encoder_2.")]
    pipe = model.load()
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    assert _injected(pipe.text_encoder) == len(te) // 2
    assert _injected(pipe.text_encoder_2) == 0
