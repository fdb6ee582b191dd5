"""Qwen-Image through the real engine on a tiny random model, judged by diffusers.

One shared run (four images, rank 4 with alpha 8, so a file that loses alpha loads at the
wrong strength) writes both files. ``QwenImagePipeline.load_lora_weights`` must inject every
module of each and reproduce the in-memory transformer; the transformer is called the way the
pipeline calls it (``encode_prompt``, ``_pack_latents``, ``img_shapes``). The objective's draw
is checked against ``diffusers.training_utils`` and the pipeline's ``calculate_shift``.
"""

from __future__ import annotations

import math

import pytest
import torch
from family_checks import (
    check_cached_length,
    check_export_both_ways,
    check_export_without_base,
    check_lora_changes_the_image,
    check_refused,
    check_template,
    injected,
    inspect_files,
    plan_of,
    rendered,
    shared_run,
)
from flow_helpers import assert_resumes_exactly
from sd_helpers import first_losses, lora_keys

STEPS = 12
CAPTIONS = ["a red cat", "a photo of a small house near the river at night"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from lorakit.testing import one_thread
    from lorakit_sd import families

    with one_thread():
        return families.get("qwen_image").standin(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    return shared_run(model, tmp_path_factory.mktemp("qwen-run"), STEPS)


def _x(seed=0):
    return torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(seed))


def pipeline_output(pipe, transformer, latents, sigma, captions=CAPTIONS):
    """The transformer's prediction as ``QwenImagePipeline.__call__`` computes it."""
    embeds, mask = pipe.encode_prompt(captions, device="cpu", max_sequence_length=32)
    b, c, h, w = latents.shape
    with torch.no_grad():
        out = transformer(
            hidden_states=pipe._pack_latents(latents, b, c, h, w),
            timestep=torch.full((b,), sigma),
            encoder_hidden_states=embeds,
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
    return pipe._unpack_latents(out, h * 8, w * 8, 8)[:, :, 0]


# -- the step as the pipeline defines it -------------------------------------------------------


def test_the_text_cache_keeps_the_longest_captions_length(model):
    check_cached_length("qwen_image", model.load(), CAPTIONS)


def test_training_step_calls_the_transformer_as_the_pipeline_does(model):
    """Cached (padded, masked) captions and our packing give the pipeline's prediction."""
    from lorakit_sd import families

    family = families.get("qwen_image")
    pipe = model.load()
    # the template's system prefix is what the pipeline drops, as for the real tokenizer
    prefix = pipe.prompt_template_encode.split("{}")[0].rsplit("user\n", 1)[0] + "user\n"
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34
    hidden, mask = family.encode(pipe, CAPTIONS, 32)
    assert hidden.shape[1] == 32 and mask.sum(1).tolist()[0] < mask.sum(1).tolist()[1]
    x = _x()
    with torch.no_grad():
        ours = family.denoise(pipe.transformer, x, torch.full((2,), 400.0), hidden, mask, None)
        # a batch whose captions fill it: no mask, as encode_prompt returns it
        one, full = family.encode(pipe, CAPTIONS[1:], 32)
        alone = family.denoise(pipe.transformer, x[1:], torch.full((1,), 400.0), one, full, None)
    want = pipeline_output(pipe, pipe.transformer, x, 0.4)
    assert (ours - want).abs().max().item() < 1e-5
    assert (alone - want[1:]).abs().max().item() < 1e-5


def test_latents_are_normalised_as_the_pipeline_denormalises_them(model):
    from lorakit_sd import families

    family = families.get("qwen_image")
    pipe = model.load()
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    moments = family.encode_moments(pipe.vae, pixels)
    with torch.no_grad():
        mean = pipe.vae.encode(pixels[:, :, None]).latent_dist.mean[:, :, 0]
    assert torch.allclose(moments[:, :16], mean)
    z = family.normalize(mean, pipe.vae.config)
    cfg = pipe.vae.config  # QwenImagePipeline: latents / (1 / std) + mean before decoding
    std = 1.0 / torch.tensor(cfg.latents_std).view(1, 16, 1, 1)
    back = z / std + torch.tensor(cfg.latents_mean).view(1, 16, 1, 1)
    assert torch.allclose(back, mean, atol=1e-6)
    assert family.pixel_multiple(pipe) == pipe.vae_scale_factor * 2 == 16


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform", "sigmoid"])
def test_draw_matches_diffusers_and_the_pipelines_shift(model, sampling):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
    from diffusers.training_utils import (
        compute_density_for_timestep_sampling,
        compute_loss_weighting_for_sd3,
    )
    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    sec = SDSection(timestep_sampling=sampling, loss_weighting="cosmap", logit_mean=0.1)
    holder = type("P", (), {})()
    holder.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        model.diffusers_dir, subfolder="scheduler"
    )
    objective = families.get("qwen_image").objective(holder, sec)
    x0 = torch.randn(6, 16, 8, 12)
    torch.manual_seed(3)
    draw = objective.draw(x0)
    torch.manual_seed(3)
    noise = torch.randn(x0.shape)
    if sampling == "sigmoid":
        u = torch.sigmoid(torch.randn(6))
    else:
        u = compute_density_for_timestep_sampling(sampling, 6, 0.1, 1.0, 1.29)
    c = holder.scheduler.config  # the pipeline's mu for its packed sequence (4 x 6 tokens)
    mu = calculate_shift(24, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    assert mu == pytest.approx(0.5 + (0.9 - 0.5) / (8192 - 256) * (24 - 256))
    sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    assert torch.allclose(draw.sigmas, sigma, atol=1e-6)
    assert torch.allclose(draw.timesteps, sigma * 1000, atol=1e-3)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(draw.noisy, (1 - s) * x0 + s * noise, atol=1e-6)
    assert torch.equal(draw.target, noise - x0)
    assert torch.allclose(draw.weight, compute_loss_weighting_for_sd3("cosmap", s))


@pytest.mark.parametrize(
    "sd,words",
    [
        ({"train_text_encoder": True}, "Qwen-Image's Qwen2.5-VL text encoder takes no LoRA"),
        ({"base_quantization": "fp8"}, "sd.base_quantization fp8: .* need a CUDA GPU"),
    ],
)
def test_what_cannot_run_is_refused_in_one_line(model, tmp_path, sd, words):
    check_refused(model, tmp_path, sd, words)


# -- training and files -----------------------------------------------------------------------


def test_diffusers_file_reproduces_the_in_memory_transformer(model, run):
    _, result, cap = run
    assert result.steps == STEPS and len(first_losses(result.output_dir)) == STEPS
    pipe = model.load()
    want = pipeline_output(pipe, cap.unet, _x(), 0.5)
    base = pipeline_output(pipe, pipe.transformer, _x(), 0.5)
    assert (want - base).abs().max() > 1e-3
    path = result.output_dir / "run.diffusers.safetensors"
    keys, meta = lora_keys(path)
    assert all(k.startswith("transformer.") for k in keys)
    pipe.load_lora_weights(str(path))
    # diffusers drops keys it cannot place without a word: every module must arrive
    assert injected(pipe.transformer) == len(keys) // 2 == injected(cap.unet)
    got = pipeline_output(pipe, pipe.transformer, _x(), 0.5)
    assert (got - want).abs().max().item() < 1e-5
    assert meta["modelspec.architecture"] == "Qwen-Image/lora"  # musubi-tuner's name
    assert meta["ss_network_alpha"] == "8" and meta["ss_network_dim"] == "4"


def test_comfyui_file_maps_by_comfyuis_rule_and_diffusers_reads_it(model, run):
    """Every key is ``lora_unet_<weight path, dots as underscores>`` of a transformer weight
    (ComfyUI's key map for Qwen-Image: its model keeps diffusers' names); diffusers' own
    converter reads the file, alpha included, to the same transformer."""
    _, result, cap = run
    path = result.output_dir / "run.safetensors"
    keys, meta = lora_keys(path)
    weights = {k.removesuffix(".weight") for k in cap.unet.state_dict() if k.endswith(".weight")}
    rule = {"lora_unet_" + w.replace(".base_layer", "").replace(".", "_") for w in weights}
    stems = {k.split(".", 1)[0] for k in keys}
    assert stems <= rule and len(stems) == injected(cap.unet)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert meta["ss_network_module"] == "networks.lora_qwen_image"
    pipe = model.load()
    pipe.load_lora_weights(str(path))
    assert injected(pipe.transformer) == injected(cap.unet)
    want = pipeline_output(pipe, cap.unet, _x(1), 0.3)
    got = pipeline_output(pipe, pipe.transformer, _x(1), 0.3)
    assert (got - want).abs().max().item() < 1e-5


def test_previews_render_and_the_lora_changes_the_pipelines_image(model, run):
    check_lora_changes_the_image(model, run[1], STEPS)


def test_resume_continues_exactly(model, tmp_path):
    assert_resumes_exactly(tmp_path, model, max_sequence_length=32)


# -- inspect, export, merge, sample -----------------------------------------------------------


def test_inspect_names_the_layouts(model, run):
    _, result, cap = run
    comfy, diff = inspect_files(
        result.output_dir / "run.safetensors", result.output_dir / "run.diffusers.safetensors"
    )
    assert comfy.format == "kohya / ComfyUI Qwen-Image LoRA (musubi-tuner's layout)"
    assert comfy.base_model == diff.base_model == "qwen_image"
    assert comfy.modules == diff.modules == injected(cap.unet)
    assert diff.ranks == [4] and diff.alphas == [8.0]


def test_export_converts_both_ways_exactly(model, run, tmp_path):
    check_export_both_ways(model, run, tmp_path, pipeline_output, _x(2))


def test_files_without_metadata_are_told_from_sd3_by_their_modules_and_blocks():
    from lorakit_sd.lorafiles.read import file_family

    def keys(paths):
        return [f"transformer.{p}.lora_A.weight" for p in paths]

    attn = [f"transformer_blocks.{i}.attn.to_q" for i in range(60)]
    assert file_family(keys(attn), {}) == "qwen_image"
    assert file_family(keys(["transformer_blocks.0.img_mlp.net.2"]), {}) == "qwen_image"
    assert file_family(keys(attn[:24]), {}) == "sd3"  # SD3's shape: said in the docstring
    sana = [f"transformer_blocks.{i}.attn1.to_q" for i in range(60)]  # SANA 4.8B's 60 blocks
    assert file_family(keys(sana), {}) != "qwen_image"
    assert file_family(["lora_unet_transformer_blocks_0_attn_to_q.alpha"], {}) == "qwen_image"


def test_export_without_base_is_what_diffusers_reads_at_the_released_shapes(tmp_path):
    from diffusers import QwenImagePipeline

    paths = [
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.59.img_mlp.net.2",
        "transformer_blocks.3.txt_mod.1",
        "proj_out",
    ]
    check_export_without_base("qwen_image", QwenImagePipeline, paths, tmp_path)


def test_merge_writes_the_transformer_file_comfyui_keeps(model, run, tmp_path):
    """diffusers' names, as ComfyUI's ``qwen_image_bf16.safetensors`` has them: diffusers'
    ``from_single_file`` loads it and it equals ``load_lora_weights`` + ``fuse_lora``."""
    from diffusers import QwenImageTransformer2DModel
    from lorakit_sd.commands.merge import merge_checkpoint
    from safetensors import safe_open

    _, result, _ = run
    out = merge_checkpoint(
        str(model.diffusers_dir),
        [(str(result.output_dir / "run.safetensors"), 0.7)],
        tmp_path / "qwen-merged.safetensors",
    )
    with safe_open(str(out), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert "transformer_blocks.0.attn.to_q.weight" in keys  # no prefix, as ComfyUI's file
    assert meta["modelspec.architecture"] == "Qwen-Image"
    merged = QwenImageTransformer2DModel.from_single_file(
        str(out), config=str(model.diffusers_dir), subfolder="transformer"
    )
    pipe = model.load()
    base = pipeline_output(pipe, pipe.transformer, _x(3), 0.4)
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    pipe.fuse_lora(lora_scale=0.7)
    want = pipeline_output(pipe, pipe.transformer, _x(3), 0.4)
    got = pipeline_output(pipe, merged, _x(3), 0.4)
    assert (want - base).abs().max() > 1e-3 and (got - want).abs().max().item() < 1e-5


def test_sample_renders_what_the_pipeline_renders(model, run, tmp_path):
    """``lorakit sample`` with the ComfyUI file vs ``QwenImagePipeline`` with the diffusers
    file: the same seed, steps and true CFG (against a blank negative prompt)."""
    import numpy as np
    from lorakit_sd.commands.sample import sample

    _, result, _ = run
    paths = sample(
        str(model.diffusers_dir),
        [(str(result.output_dir / "run.safetensors"), 1.0)],
        ["a red cat"],
        tmp_path / "out",
        seed=3,
        steps=2,
        width=32,
        height=32,
    )
    ours = rendered(paths)
    pipe = model.load()
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    theirs = pipe(
        "a red cat",
        negative_prompt=" ",
        true_cfg_scale=7.0,
        num_inference_steps=2,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert np.abs(ours - np.asarray(theirs, dtype=int)).max() <= 2


# -- plan -------------------------------------------------------------------------------------


def test_plan_traces_the_transformer_and_offers_fp8_and_nf4(model, run, tmp_path):
    """``lorakit plan`` counts exactly the LoRA the run trained, with Qwen2.5-VL off the GPU
    (cached captions), and its ladder offers the quantized bases a 24 / 16 GB card needs."""
    data, _, cap = run
    plan = plan_of(model, data, tmp_path, max_sequence_length=32)
    trained = sum(p.numel() for p in cap.unet.parameters() if p.requires_grad)
    assert plan.estimate.trainable_params == trained and plan.estimate.activations > 0
    assert plan.model.description.startswith("Qwen-Image transformer")
    assert "Qwen2.5-VL off the GPU after caching" in plan.model.description
    costs = [cost.split(" (")[0] for _, cost in plan.model.rungs]
    assert costs[:3] == ["bf16 base weights", "fp8 base weights", "NF4 base weights"]
    assert len(costs) == 4 and costs[3].startswith("transformer blocks streamed from CPU memory")


# -- the template -----------------------------------------------------------------------------


def test_template_trains_as_written_and_diffusers_loads_its_files(model, tmp_path, capsys):
    """``config init --template qwen-image``, only paths, size and steps replaced, trains (bf16
    autocast, diffusers' gradient checkpointing) and both files load in the pipeline with the
    trained deltas."""
    last = ["transformer_blocks.1.attn.add_q_proj", "transformer_blocks.1.attn.to_add_out"]
    check_template(tmp_path, "qwen-image", model, capsys, last)
