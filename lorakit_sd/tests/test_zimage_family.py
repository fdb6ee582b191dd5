"""Z-Image through the real engine on a tiny random model, judged by diffusers.

One shared run (rank 4, alpha 8) writes both files; ``ZImagePipeline.load_lora_weights``
must inject every module of each and reproduce the in-memory transformer, called the way
the pipeline calls it (a list of one-frame latents, each caption's own tokens, ``1 - σ`` as
the timestep, the prediction negated). The draw is checked against
``diffusers.training_utils`` and the scheduler's fixed shift; ``merge`` writes the original
layout, which diffusers' own ``from_single_file`` converter reads.
"""

from __future__ import annotations

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
from flow_helpers import assert_resumes_exactly, train
from sd_helpers import first_losses, lora_keys

STEPS = 12
CAPTIONS = ["a red cat", "a photo of a small house near the river at night"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from lorakit.testing import one_thread
    from lorakit_sd import families

    with one_thread():
        return families.get("zimage").standin(tmp_path_factory.mktemp("zimage"))


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    return shared_run(model, tmp_path_factory.mktemp("zimage-run"), STEPS)


def _x(seed=0):
    return torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def pipeline_output(pipe, transformer, latents, sigma, captions=CAPTIONS):
    """The velocity ``ZImagePipeline.__call__`` hands its scheduler at σ."""
    embeds, _ = pipe.encode_prompt(
        list(captions), device="cpu", do_classifier_free_guidance=False, max_sequence_length=32
    )
    t = torch.full((latents.shape[0],), sigma * 1000)
    with torch.no_grad():
        out = transformer(
            list(latents.unsqueeze(2).unbind(dim=0)), (1000 - t) / 1000, embeds, return_dict=False
        )[0]
    return -torch.stack([o.float() for o in out], dim=0).squeeze(2)


# -- the step as the pipeline defines it -------------------------------------------------------


def test_the_text_cache_keeps_the_longest_captions_length(model):
    check_cached_length("zimage", model.load(), CAPTIONS)


def test_training_step_calls_the_transformer_as_the_pipeline_does(model):
    from lorakit_sd import families

    family = families.get("zimage")
    pipe = model.load()
    hidden, mask = family.encode(pipe, CAPTIONS, 32)
    assert hidden.shape[1] == 32 and mask.sum(1)[0] < mask.sum(1)[1]
    x = _x()
    with torch.no_grad():
        ours = family.denoise(pipe.transformer, x, torch.full((2,), 400.0), hidden, mask, None)
    want = pipeline_output(pipe, pipe.transformer, x, 0.4)
    assert (ours - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform"])
def test_draw_matches_diffusers_and_the_fixed_shift(model, sampling):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    holder = type("P", (), {})()
    holder.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        model.diffusers_dir, subfolder="scheduler"
    )
    sec = SDSection(timestep_sampling=sampling, logit_mean=0.1)
    objective = families.get("zimage").objective(holder, sec)
    x0 = torch.randn(6, 16, 8, 8)
    torch.manual_seed(3)
    draw = objective.draw(x0)
    torch.manual_seed(3)
    noise = torch.randn(x0.shape)
    u = compute_density_for_timestep_sampling(sampling, 6, 0.1, 1.0, 1.29)
    shift = holder.scheduler.config.shift
    assert shift == 3.0 and not holder.scheduler.config.use_dynamic_shifting
    sigma = shift * u / (1 + (shift - 1) * u)  # the scheduler's shift (SD3 paper, eq. 23)
    assert torch.allclose(draw.sigmas, sigma, atol=1e-6)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(draw.noisy, (1 - s) * x0 + s * noise, atol=1e-6)
    assert torch.equal(draw.target, noise - x0)


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
    assert injected(pipe.transformer) == len(keys) // 2 == injected(cap.unet)
    got = pipeline_output(pipe, pipe.transformer, _x(), 0.5)
    assert (got - want).abs().max().item() < 1e-5
    assert meta["modelspec.architecture"] == "Z-Image/lora"  # musubi-tuner's name
    assert meta["ss_network_alpha"] == "8" and meta["ss_network_dim"] == "4"


def test_comfyui_file_uses_the_names_comfyui_maps_and_diffusers_reads_it(model, run):
    """``diffusion_model.<diffusers path>`` (ComfyUI's Z-Image key map takes every diffusers
    weight path under that prefix); diffusers' converter reads the file, alpha included."""
    _, result, cap = run
    path = result.output_dir / "run.safetensors"
    keys, _ = lora_keys(path)
    weights = {k.removesuffix(".weight").replace(".base_layer", "") for k in cap.unet.state_dict()}
    stems = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in keys}
    assert {s.removeprefix("diffusion_model.") for s in stems} <= weights
    assert all(s.startswith("diffusion_model.") for s in stems)
    assert len(stems) == injected(cap.unet)
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


def test_inspect_names_the_layouts(run):
    _, result, cap = run
    comfy, diff = inspect_files(
        result.output_dir / "run.safetensors", result.output_dir / "run.diffusers.safetensors"
    )
    assert comfy.format.startswith("ComfyUI Z-Image LoRA")
    assert comfy.base_model == diff.base_model == "z_image"  # ss_base_model_version
    assert comfy.modules == diff.modules == injected(cap.unet)


def test_export_converts_both_ways_exactly(model, run, tmp_path):
    check_export_both_ways(model, run, tmp_path, pipeline_output, _x(2))


def test_export_without_base_is_what_diffusers_reads_at_the_released_shapes(tmp_path):
    from diffusers import ZImagePipeline

    paths = [
        "layers.0.attention.to_q",
        "layers.29.feed_forward.w2",
        "noise_refiner.1.attention.to_out.0",
        "context_refiner.0.attention.to_k",
    ]
    check_export_without_base("zimage", ZImagePipeline, paths, tmp_path)


def _musubi_file(cap, path):
    """The run's LoRA as musubi-tuner's ``networks.lora_zimage`` lays it out: the original
    names as ``lora_unet_<name>``, q/k/v fused into one ``attention.qkv`` entry (exactly, with
    ``fuse``'s block-diagonal up)."""
    from lorakit_sd.families.fused_lora import fuse
    from lorakit_sd.lorafiles.names import LoraModule
    from safetensors.torch import save_file

    modules = {}
    for name, layer in cap.unet.named_modules():
        if hasattr(layer, "lora_A") and "default" in layer.lora_A:
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            alpha = layer.scaling["default"] * a.shape[0]
            modules[name] = LoraModule("transformer", name, a.detach(), b.detach(), alpha)
    out = {}
    for name in [n for n in modules if n.endswith(".attention.to_q")]:
        block = name.removesuffix(".to_q")
        parts = [modules.pop(f"{block}.to_{n}") for n in "qkv"]
        down, up, alpha = fuse([(int(m.up.shape[0]), m) for m in parts])
        stem = "lora_unet_" + f"{block}.qkv".replace(".", "_")
        out |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
        out[f"{stem}.alpha"] = torch.tensor(alpha)
    for name, m in modules.items():  # to_out.0 is attention.out in the original names
        stem = "lora_unet_" + name.replace(".to_out.0", ".out").replace(".", "_")
        out |= {f"{stem}.lora_down.weight": m.down, f"{stem}.lora_up.weight": m.up}
        out[f"{stem}.alpha"] = torch.tensor(m.alpha)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def test_musubi_tuner_files_with_fused_qkv_are_read_exactly(model, run, tmp_path):
    """musubi-tuner's layout (what ComfyUI maps by its generic ``lora_unet_`` rule from the
    original weight names) converts to diffusers' layout, which reproduces the trained
    transformer in the pipeline."""
    from lorakit_sd.commands.export import export
    from lorakit_sd.families.zimage.single_file import diffusers_to_original

    _, _, cap = run
    musubi = _musubi_file(cap, tmp_path / "musubi.safetensors")
    keys, _ = lora_keys(musubi)
    pipe = model.load()
    original = diffusers_to_original(dict(pipe.transformer.state_dict()))
    rule = {"lora_unet_" + k.removesuffix(".weight").replace(".", "_") for k in original}
    assert {k.split(".", 1)[0] for k in keys} <= rule  # ComfyUI's generic key map
    [kind] = inspect_files(musubi)
    assert kind.format.startswith("kohya / ComfyUI Z-Image LoRA (musubi-tuner's layout")
    out = export(
        musubi, "diffusers", tmp_path / "m.diffusers.safetensors", str(model.diffusers_dir)
    )
    pipe.load_lora_weights(str(out[0]))
    assert injected(pipe.transformer) == injected(cap.unet)
    want = pipeline_output(pipe, cap.unet, _x(4), 0.5)
    assert (pipeline_output(pipe, pipe.transformer, _x(4), 0.5) - want).abs().max() < 1e-5


def test_merge_writes_the_original_layout_diffusers_converts(model, run, tmp_path):
    from diffusers import ZImageTransformer2DModel
    from lorakit_sd.commands.merge import merge_checkpoint
    from safetensors import safe_open

    _, result, _ = run
    out = merge_checkpoint(
        str(model.diffusers_dir),
        [(str(result.output_dir / "run.safetensors"), 0.7)],
        tmp_path / "z-merged.safetensors",
    )
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
    assert "layers.0.attention.qkv.weight" in keys and "x_embedder.weight" in keys
    merged = ZImageTransformer2DModel.from_single_file(
        str(out), config=str(model.diffusers_dir), subfolder="transformer"
    )
    pipe = model.load()
    base = pipeline_output(pipe, pipe.transformer, _x(3), 0.4)
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    pipe.fuse_lora(lora_scale=0.7)
    want = pipeline_output(pipe, pipe.transformer, _x(3), 0.4)
    got = pipeline_output(pipe, merged, _x(3), 0.4)
    assert (want - base).abs().max() > 1e-3 and (got - want).abs().max().item() < 1e-5


def test_the_quantized_reload_gives_back_the_transformer(model):
    """``sd.base_quantization`` (CUDA only) reloads the transformer from its own state dict
    through ``from_single_file``, whose Z-Image converter renames keys: the reload (here
    without a quantizer) must give back the very transformer."""
    from diffusers import ZImageTransformer2DModel

    pipe = model.load()
    state = pipe.transformer.state_dict()
    back = ZImageTransformer2DModel.from_single_file(
        dict(state), config=str(model.diffusers_dir), subfolder="transformer"
    ).state_dict()
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_the_original_transformer_file_trains_with_base_config(model, run, tmp_path):
    """The merged file is Z-Image's released layout: as ``base_model`` (configs from
    ``sd.base_config``) it loads as the merged transformer and trains."""
    from lorakit_sd.commands.merge import merge_checkpoint

    data, result, _ = run
    out = merge_checkpoint(
        str(model.diffusers_dir),
        [(str(result.output_dir / "run.safetensors"), 1.0)],
        tmp_path / "z_image_turbo_bf16.safetensors",
    )
    trained, _ = train(
        tmp_path,
        model,
        data,
        max_steps=1,
        base_model=str(out),
        sd={"base_config": str(model.diffusers_dir), "max_sequence_length": 32},
    )
    assert trained.steps == 1 and len(first_losses(trained.output_dir)) == 1


def test_sample_renders_what_the_pipeline_renders(model, run, tmp_path):
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
    pipe = model.load()
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    theirs = pipe(
        "a red cat",
        guidance_scale=7.0,
        num_inference_steps=2,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert np.abs(rendered(paths) - np.asarray(theirs, dtype=int)).max() <= 2


def test_training_the_text_encoder_is_refused_in_one_line(model, tmp_path):
    words = "Z-Image's Qwen3 text encoder takes no LoRA"
    check_refused(model, tmp_path, {"train_text_encoder": True}, words)


# -- plan and template ------------------------------------------------------------------------


def test_plan_traces_the_transformer(model, run, tmp_path):
    data, _, cap = run
    plan = plan_of(model, data, tmp_path, max_sequence_length=32)
    trained = sum(p.numel() for p in cap.unet.parameters() if p.requires_grad)
    assert plan.estimate.trainable_params == trained and plan.estimate.activations > 0
    assert plan.model.description.startswith("Z-Image transformer")
    assert "Qwen3 off the GPU after caching" in plan.model.description


def test_template_trains_as_written_and_diffusers_loads_its_files(model, tmp_path, capsys):
    check_template(tmp_path, "z-image", model, capsys, [])
