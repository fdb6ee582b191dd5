"""FLUX.2 dev and klein through the real engine on tiny stand-ins, judged by diffusers.

One run per variant (alpha 8, rank 4, so a file that loses alpha changes strength). The
judges: ``Flux2Pipeline`` / ``Flux2KleinPipeline`` themselves (one Euler step from σ = 1 is
the transformer's velocity; ``_encode_vae_image`` is the latent), their
``load_lora_weights`` (every tensor injected, for the diffusers file and the kohya / BFL file
ComfyUI loads), ``diffusers.training_utils`` and the scheduler's ``time_shift`` formula.
"""

from __future__ import annotations

import math

import pytest
import torch
from flow_helpers import assert_resumes_exactly, overfit, train
from flux2_helpers import injected, velocity
from lorakit_sd.testing import write_tiny_images
from sd_helpers import first_losses, lora_keys

STEPS = 16
FAMILIES = ("flux2", "flux2_klein")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lorakit_sd.families.flux2.standin import build_tiny_flux2

    root = tmp_path_factory.mktemp("flux2")
    return {f: build_tiny_flux2(root / f, f) for f in FAMILIES}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    out = {}
    for family in FAMILIES:
        tmp = tmp_path_factory.mktemp(f"run-{family}")
        data, result, cap = overfit(tmp, models[family], STEPS)
        cap.unet.eval()
        out[family] = (models[family], data, result, cap)
    return out


@pytest.fixture(params=FAMILIES)
def run(request, runs):
    return runs[request.param]


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 128, 8, 8, generator=torch.Generator().manual_seed(seed))


CAPTIONS = ["a red cat", "a dog in the park"]


# -- training and the diffusers file ---------------------------------------------------------


def test_loss_falls_and_previews_render(run):
    from PIL import Image

    _, _, result, _ = run
    losses = first_losses(result.output_dir)
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4])
    with Image.open(result.output_dir / "samples" / f"step-{STEPS:06d}.png") as im:
        assert im.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_diffusers_file_reproduces_the_trained_transformer(run):
    """``load_lora_weights`` injects every tensor, keeps alpha / rank, and the pipeline's
    transformer then predicts what the in-memory one does."""
    model, _, result, cap = run
    pipe = model.load()
    want = velocity(pipe, cap.unet, _x(), CAPTIONS)
    base = velocity(pipe, pipe.transformer, _x(), CAPTIONS)
    assert (want - base).abs().max() > 1e-3  # the LoRA changes the output
    path = result.output_dir / "run.diffusers.safetensors"
    keys, meta = lora_keys(path)
    assert all(k.startswith("transformer.") for k in keys)
    pipe.load_lora_weights(str(path))
    assert injected(pipe.transformer) == len(keys) // 2 == injected(cap.unet)
    got = velocity(pipe, pipe.transformer, _x(), CAPTIONS)
    assert (got - want).abs().max().item() < 1e-5
    # the single blocks' to_out (a Linear there, a ModuleList in double blocks) is trained
    assert any(".single_transformer_blocks.0.attn.to_out.lora_A" in k for k in keys)
    variant = "dev" if model.family == "flux2" else "klein"
    assert meta["modelspec.architecture"] == f"Flux.2-{variant}/lora"
    assert meta["ss_base_model_version"] == model.family
    assert meta["ss_network_module"] == "networks.lora_flux_2"


# -- the ComfyUI / musubi layout -------------------------------------------------------------


def test_comfyui_file_loads_in_diffusers_exactly(run):
    """The kohya / BFL file (fused q/k/v at rank 3r) through diffusers' own kohya FLUX.2
    conversion reproduces the trained transformer."""
    model, _, result, cap = run
    path = result.output_dir / "run.safetensors"
    keys, meta = lora_keys(path)
    assert all(k.startswith("lora_unet_") for k in keys)
    assert meta["ss_base_model_version"] == model.family and meta["sshs_model_hash"]
    pipe = model.load()
    pipe.load_lora_weights(str(path))
    assert injected(pipe.transformer) == injected(cap.unet)
    want = velocity(pipe, cap.unet, _x(1), CAPTIONS)
    got = velocity(pipe, pipe.transformer, _x(1), CAPTIONS)
    assert (got - want).abs().max().item() < 1e-5


def test_comfyui_maps_every_key_to_a_weight_of_the_transformer_file(run):
    """ComfyUI's generic rule (``comfy/lora.py``): ``lora_unet_<path with _>`` patches
    ``diffusion_model.<path>.weight`` of its FLUX.2 model, whose names are BFL's (the
    transformer file's): every key must name one, with the weight's shape."""
    from safetensors.torch import load_file

    model, _, result, _ = run
    weights = load_file(str(model.single_file))
    rule = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in weights}
    tensors = load_file(str(result.output_dir / "run.safetensors"))
    stems = {k.split(".", 1)[0] for k in tensors}
    assert stems and all(s in rule for s in stems)
    for stem in stems:
        up, down = tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"]
        assert (up.shape[0], down.shape[1]) == tuple(weights[rule[stem]].shape)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape[0] == 12  # rank 3r
    assert float(tensors[f"{qkv}.alpha"]) == 24.0  # alpha / rank kept: 8 / 4


def test_export_converts_between_the_layouts(runs, tmp_path):
    from lorakit_sd.commands.export import export

    model, _, result, cap = runs["flux2"]
    base = str(model.diffusers_dir)
    source = result.output_dir / "run.safetensors"
    back = export(source, "diffusers", tmp_path / "b.safetensors", base)
    kohya = export(back[0], "kohya", tmp_path / "k.safetensors", base)
    pipe = model.load()
    pipe.load_lora_weights(str(back[0]))
    assert injected(pipe.transformer) == injected(cap.unet)
    want = velocity(pipe, cap.unet, _x(2), CAPTIONS)
    assert (velocity(pipe, pipe.transformer, _x(2), CAPTIONS) - want).abs().max() < 1e-5
    keys, meta = lora_keys(kohya[0])
    assert sorted(keys) == sorted(lora_keys(result.output_dir / "run.safetensors")[0])
    assert meta["modelspec.architecture"] == "Flux.2-dev/lora"


# -- the objective, against the pipeline and diffusers -----------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_latents_and_velocity_are_the_pipelines(models, family):
    """The cached latent is ``_encode_vae_image``'s; the family's transformer call is the
    pipeline's (one Euler step from σ = 1)."""
    from lorakit_sd import families

    spec = families.get(family)
    pipe = models[family].load()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    ours = spec.encode_moments(pipe.vae, pixels)
    theirs = pipe._encode_vae_image(pixels, generator=None)
    assert torch.allclose(ours, theirs, atol=1e-6)
    x = _x(3)
    with torch.no_grad():
        hidden, _ = spec.encode(pipe, CAPTIONS, 16)
        guidance = torch.ones(2) if family == "flux2" else None
        pred = spec.denoise(pipe.transformer, x, torch.full((2,), 1000.0), hidden, None, guidance)
    want = velocity(pipe, pipe.transformer, x, CAPTIONS)
    assert torch.allclose(pipe._pack_latents(pred), want, atol=1e-5)


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform", "sigmoid"])
def test_draw_matches_training_utils_and_the_time_shift(models, sampling):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    holder = type("P", (), {})()
    holder.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        models["flux2"].diffusers_dir, subfolder="scheduler"
    )
    sec = SDSection(timestep_sampling=sampling, logit_mean=0.2)
    objective = families.get("flux2").objective(holder, sec)
    x0 = torch.randn(5, 128, 16, 24)
    torch.manual_seed(4)
    draw = objective.draw(x0)
    torch.manual_seed(4)
    noise = torch.randn(x0.shape)
    if sampling == "sigmoid":
        u = torch.sigmoid(torch.randn(5))
    else:
        u = compute_density_for_timestep_sampling(sampling, 5, 0.2, 1.0, 1.29)
    tokens = 16 * 24  # one token per patchified latent pixel
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    assert torch.allclose(draw.sigmas, sigma, atol=1e-6)
    assert torch.allclose(draw.sigmas, holder.scheduler.time_shift(mu, 1.0, u), atol=1e-6)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(draw.noisy, (1 - s) * x0 + s * noise, atol=1e-6)
    assert torch.equal(draw.target, noise - x0)


def test_resume_continues_exactly(models, tmp_path):
    assert_resumes_exactly(tmp_path, models["flux2"])


def test_the_text_encoder_stays_off_and_takes_no_lora(models, tmp_path):
    from lorakit.api import ConfigError

    data = write_tiny_images(tmp_path / "data", 2)
    with pytest.raises(ConfigError, match="takes no LoRA; remove sd.train_text_encoder"):
        train(tmp_path, models["flux2"], data, max_steps=1, sd={"train_text_encoder": True})
