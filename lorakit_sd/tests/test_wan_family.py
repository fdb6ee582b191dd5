"""Wan 2.1 text-to-video through the real engine on a tiny random model, judged by diffusers.

One run trains the stand-in on two clips (x264 and QuickTime RLE, made here with PyAV) and a
still image, with a preview clip at the end. ``WanPipeline.load_lora_weights`` reads both
files it writes (diffusers' layout and ComfyUI's) with every tensor injected and reproduces
the in-memory transformer; the objective's draw is checked against diffusers'
``training_utils`` and the flow-matching scheduler's shift; a resumed run equals an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flow_helpers import train
from PIL import Image
from video_helpers import moving_square, write_clip

STEPS = 16
CAPTIONS = ["a red square moving right", "a blue square moving right"]
VIDEO = {"frames": [5, 9]}


def write_clips(directory):
    """Two 12-frame clips and a still image, captioned in metadata.csv."""
    write_clip(directory / "red.mp4", 12, color=0)
    write_clip(directory / "blue.mov", 12, color=1)
    Image.fromarray(moving_square(2, color=2)).save(directory / "green.png")
    rows = ["file_name,text", f"red.mp4,{CAPTIONS[0]}", f"blue.mov,{CAPTIONS[1]}"]
    rows.append("green.png,a green square")
    (directory / "metadata.csv").write_text("\n".join(rows) + "\n")
    return directory


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    from lorakit_sd.families.wan.standin import build_tiny_wan

    tmp = tmp_path_factory.mktemp("wan")
    model = build_tiny_wan(tmp / "model")
    data = write_clips(tmp / "data")
    result, cap = train(
        tmp,
        model,
        data,
        max_steps=STEPS,
        batch_size=2,
        learning_rate=1e-2,
        lora_alpha=8,
        sample_prompts=["a red square"],
        sample_every_n_steps=STEPS,
        sd={"video": VIDEO},
    )
    cap.unet.eval()
    return model, data, result, cap


def _hidden(pipe, captions):
    with torch.no_grad():
        return pipe.encode_prompt(
            captions, do_classifier_free_guidance=False, max_sequence_length=16
        )[0]


def output(pipe, transformer, latents, sigma, captions=CAPTIONS):
    """The transformer's prediction, called as ``WanPipeline.__call__`` calls it."""
    t = torch.full((latents.shape[0],), sigma * 1000.0)
    with torch.no_grad():
        return transformer(
            hidden_states=latents,
            timestep=t,
            encoder_hidden_states=_hidden(pipe, captions),
            return_dict=False,
        )[0]


def _x(seed):
    return torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def _injected(transformer):
    return sum(1 for name, _ in transformer.named_modules() if name.endswith(".lora_A"))


def _frames(pipe):
    return pipe(
        "a red square",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        max_sequence_length=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames[0]


def flow_loss(pipe, transformer, data):
    """Mean flow-matching error on the two training clips' first 9 frames, fixed σ and noise,
    latents normalised as the pipeline un-normalises them before decoding."""
    from lorakit_sd.data.video import load_clip

    clips = [load_clip(data / n, tuple(range(9)), (32, 32)) for n in ("red.mp4", "blue.mov")]
    with torch.no_grad():
        z = pipe.vae.encode(torch.stack(clips)).latent_dist.mean
    c = pipe.vae.config
    mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1)
    x0 = (z - mean) * inv_std  # WanPipeline decodes latents / inv_std + mean
    total = 0.0
    for i, sigma in enumerate((0.2, 0.4, 0.6, 0.8)):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
        pred = output(pipe, transformer, (1 - sigma) * x0 + sigma * noise, sigma)
        total += torch.nn.functional.mse_loss(pred, noise - x0).item()
    return total / 4


def test_the_diffusers_file_loads_whole_lowers_the_loss_and_changes_the_frames(wan):
    from sd_helpers import lora_keys

    model, data, result, cap = wan
    path = result.output_dir / "run.diffusers.safetensors"
    keys, meta = lora_keys(path)
    assert keys and all(k.startswith("transformer.blocks.") for k in keys)
    pipe = model.load()
    before, frames_before = flow_loss(pipe, pipe.transformer, data), _frames(pipe)
    want = output(pipe, cap.unet, _x(0), 0.5)
    assert (want - output(pipe, pipe.transformer, _x(0), 0.5)).abs().max() > 1e-3
    pipe.load_lora_weights(str(path))
    # diffusers drops keys it cannot place without a word: every module must arrive
    assert _injected(pipe.transformer) == len(keys) // 2 == _injected(cap.unet)
    assert (output(pipe, pipe.transformer, _x(0), 0.5) - want).abs().max().item() < 1e-5
    assert flow_loss(pipe, pipe.transformer, data) < 0.9 * before
    assert np.abs(_frames(pipe) - frames_before).max() > 1e-3
    assert meta["modelspec.architecture"] == "wan-2.1/lora" and meta["ss_frame_buckets"] == "5,9"


#: ComfyUI's names of the original Wan modules a LoRA may adapt (its key map is the model's
#: own state dict under ``diffusion_model.``: these are the original WanModel's Linears)
ORIGINAL = re.compile(
    r"^diffusion_model\.blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$"
)


def test_the_comfyui_file_names_original_modules_and_diffusers_reads_it_exactly(wan):
    from safetensors.torch import load_file

    model, _, result, cap = wan
    path = result.output_dir / "run.safetensors"
    tensors = load_file(str(path))
    assert tensors and all(ORIGINAL.match(k) for k in tensors), sorted(tensors)[:3]
    assert {
        "diffusion_model.blocks.0.self_attn.q.alpha",
        "diffusion_model.blocks.1.cross_attn.o.lora_up.weight",
    } <= set(tensors)
    assert float(tensors["diffusion_model.blocks.0.self_attn.q.alpha"]) == 8.0
    pipe = model.load()
    pipe.load_lora_weights(str(path))  # diffusers' own converter of this layout
    assert _injected(pipe.transformer) == _injected(cap.unet) == len(tensors) // 3
    want = output(pipe, cap.unet, _x(1), 0.3)
    assert (output(pipe, pipe.transformer, _x(1), 0.3) - want).abs().max().item() < 1e-5


def test_export_converts_between_the_layouts_and_inspect_names_them(wan, tmp_path, sd_plugins):
    from lorakit_sd.commands.export import export
    from safetensors.torch import load_file

    from lorakit.diagnostics.inspect import inspect_path

    model, _, result, cap = wan
    comfy = result.output_dir / "run.safetensors"
    info = inspect_path(comfy)
    assert info.format.startswith("ComfyUI Wan LoRA") and info.base_model == "wan"
    assert info.modules == _injected(cap.unet) and info.groups == {"transformer": info.modules}
    base = str(model.diffusers_dir)
    diffusers = export(comfy, "diffusers", tmp_path / "d.safetensors", base)[0]
    back = export(diffusers, "kohya", tmp_path / "c.safetensors", base)[0]
    a, b = load_file(str(comfy)), load_file(str(back))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = model.load()
    pipe.load_lora_weights(str(diffusers))
    assert _injected(pipe.transformer) == _injected(cap.unet)
    want = output(pipe, cap.unet, _x(2), 0.7)
    assert (output(pipe, pipe.transformer, _x(2), 0.7) - want).abs().max().item() < 1e-5


def test_merge_bakes_the_lora_into_an_original_layout_transformer(wan, tmp_path):
    """The merged file is the transformer in the original layout, read by diffusers' own
    converter (``from_single_file``), and equals the in-memory LoRA transformer."""
    from diffusers import WanTransformer3DModel
    from lorakit_sd.commands.merge import merge_checkpoint
    from safetensors.torch import load_file

    model, _, result, cap = wan
    out = merge_checkpoint(
        str(model.diffusers_dir),
        [(str(result.output_dir / "run.safetensors"), 1.0)],
        tmp_path / "m.safetensors",
    )
    assert "blocks.0.self_attn.q.weight" in load_file(str(out))  # the original (ComfyUI) layout
    merged = WanTransformer3DModel.from_single_file(
        str(out), config=str(model.diffusers_dir), subfolder="transformer", local_files_only=True
    )
    pipe = model.load()
    want = output(pipe, cap.unet, _x(3), 0.5)
    assert (output(pipe, merged.eval(), _x(3), 0.5) - want).abs().max().item() < 1e-5


def _decode_mp4(path):
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_previews_and_sample_write_clips(wan, tmp_path):
    from lorakit_sd.commands.sample import sample

    model, _, result, _ = wan
    samples = result.output_dir / "samples"
    preview = _decode_mp4(samples / f"step-{STEPS:06d}-00.mp4")
    assert len(preview) == 5 and preview[0].shape == (32, 32, 3)  # the smallest frame bucket
    paths = sample(
        str(model.diffusers_dir),
        [(str(result.output_dir / "run.safetensors"), 1.0)],
        ["a red square"],
        tmp_path / "out",
        seed=0,
        steps=2,
        width=32,
        height=32,
        config=None,
    )
    mp4 = next(p for p in paths if p.suffix == ".mp4")
    webp = next(p for p in paths if p.suffix == ".webp")
    frames = _decode_mp4(mp4)
    with Image.open(webp) as im:
        assert im.n_frames == len(frames) == 17  # sd.video.frames' smallest by default
        im.seek(3)
        webp3 = np.asarray(im.convert("RGB"), dtype=int)
    # the webp is lossless; the mp4 is H.264 4:2:0: the same frame within codec loss
    assert np.abs(webp3 - frames[3].astype(int)).mean() < 12


def test_the_objective_draws_what_diffusers_draws(wan):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    model = wan[0]
    scheduler = UniPCMultistepScheduler.from_pretrained(model.diffusers_dir, subfolder="scheduler")
    holder = type("P", (), {"scheduler": scheduler})()
    objective = families.get("wan").objective(holder, SDSection(logit_mean=0.2))
    x0 = torch.randn(6, 16, 3, 4, 4)
    torch.manual_seed(5)
    draw = objective.draw(x0)
    torch.manual_seed(5)
    noise = torch.randn(x0.shape)
    u = compute_density_for_timestep_sampling("logit_normal", 6, 0.2, 1.0, 1.29)
    # the scheduler's own shift of these σ (flow_shift 3.0 of the Wan config)
    judge = FlowMatchEulerDiscreteScheduler(shift=scheduler.config.flow_shift)
    judge.set_timesteps(sigmas=u.tolist())
    assert torch.allclose(draw.sigmas, judge.sigmas[:-1].float(), atol=1e-6)
    assert torch.allclose(draw.sigmas, 3 * u / (1 + 2 * u), atol=1e-6)
    assert torch.allclose(draw.timesteps, draw.sigmas * 1000, atol=1e-4)
    s = draw.sigmas.view(-1, 1, 1, 1, 1)
    assert torch.allclose(draw.noisy, (1 - s) * x0 + s * noise, atol=1e-6)
    assert torch.equal(draw.target, noise - x0)


def test_resume_continues_exactly(wan, tmp_path):
    from sd_helpers import resumed_equals_whole

    model, data, _, _ = wan
    common = {
        "max_steps": 4,
        "batch_size": 1,
        "learning_rate": 1e-2,
        "save_steps": 2,
        "export_formats": ["diffusers"],
        "sd": {"video": VIDEO, "caption_dropout": 0.3, "flip_aug": True},
    }
    resumed_equals_whole(train, tmp_path, model, data, common)


def test_plan_traces_the_video_step_and_offers_fewer_frames(wan, tmp_path, sd_plugins):
    """``lorakit plan`` counts exactly the LoRA the run trained, on a clip batch of the
    longest frame bucket; its ladder tries fewer frames, which need fewer activations."""
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.planning import make_plan

    model, data, _, cap = wan

    def plan(frames):
        sd = {"max_sequence_length": 16, "bucket_step": 16, "video": {"frames": frames}}
        cfg = tiny_config(model, data, tmp_path / "p", sd=sd, gradient_checkpointing=True)
        config = load_config(data=cfg, registries=sd_plugins.registries)
        return make_plan(config, None, both=False)

    full = plan([5, 9, 17])
    trained = sum(p.numel() for p in cap.unet.parameters() if p.requires_grad)
    assert full.estimate.trainable_params == trained
    assert full.model.per_step == "2 clips of 17 frames at 32×32"
    assert [changes for changes, _ in full.model.rungs][-2:] == [
        {"sd.video.frames": [5, 9]},
        {"sd.video.frames": [5]},
    ]
    assert plan([5, 9]).estimate.activations < full.estimate.activations


def test_training_from_the_original_layout_file(wan, tmp_path):
    """``base_model``: the transformer alone in the original (ComfyUI) layout, the other parts
    from ``sd.base_config``: lorakit loads the folder's transformer exactly, and trains it."""
    from lorakit_sd.models import load_base

    model, data, _, _ = wan
    base = load_base(str(model.single_file), base_config=str(model.diffusers_dir))
    assert base.family == "wan" and base.source == "single_file"
    want = model.load().transformer.state_dict()
    got = base.denoiser.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    result, cap = train(
        tmp_path, model, data, max_steps=2, batch_size=2, single_file=True, sd={"video": VIDEO}
    )
    pipe = model.load()
    pipe.load_lora_weights(str(result.output_dir / "run.safetensors"))
    assert _injected(pipe.transformer) == _injected(cap.unet) > 0
