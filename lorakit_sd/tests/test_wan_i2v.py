"""Wan 2.2 image-to-video (A14B's two experts): the first-frame condition is the one
``WanImageToVideoPipeline.prepare_latents`` builds, and the trained experts load in diffusers."""

from __future__ import annotations

import pytest
import torch
from flow_helpers import train
from PIL import Image
from test_wan_family import write_clips
from video_helpers import moving_square

VIDEO = {"frames": [5, 9]}


def _lora_count(module):
    return len([n for n, _ in module.named_modules() if n.endswith(".lora_A")])


def predictions(pipe, trained, transformer, t, image=None):
    """(the trained module's prediction, the pipeline's call of ``transformer``) on random
    noisy latents and condition: ``latent_model_input = cat([latents, condition], dim=1)``."""
    from lorakit_sd.families.transformer_module import FlowTrainModule

    from lorakit_sd import families

    hidden = pipe.encode_prompt(
        ["a", "b"], do_classifier_free_guidance=False, max_sequence_length=16
    )[0]
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 16, 3, 4, 4, generator=g)
    condition = torch.randn(2, 20, 3, 4, 4, generator=g)
    module = FlowTrainModule(families.get("wan"), pipe, trained, None, False, 16, None)
    steps = torch.full((2,), t)
    with torch.no_grad():
        mine = module(noisy, steps, hidden=hidden, pooled=image, condition=condition)
        want = transformer(
            hidden_states=torch.cat([noisy, condition], dim=1),
            timestep=steps,
            encoder_hidden_states=hidden,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]
    return mine, want


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    from lorakit_sd.families.wan.standin import build_tiny_wan

    tmp = tmp_path_factory.mktemp("i2v")
    model = build_tiny_wan(tmp / "model", experts=True, i2v=True)
    data = write_clips(tmp / "data")
    first = tmp / "first.png"
    Image.fromarray(moving_square(0)).save(first)
    result, cap = train(
        tmp,
        model,
        data,
        max_steps=6,
        batch_size=2,
        learning_rate=1e-2,
        lora_alpha=8,
        sample_prompts=["a red square"],
        sample_every_n_steps=6,
        sd={"video": {**VIDEO, "sample_image": str(first)}, "flip_aug": True},
    )
    cap.unet.eval()
    return model, data, result, cap


def test_the_condition_is_the_pipelines(i2v):
    from lorakit_sd.data.video import load_clip

    from lorakit_sd import families

    model, data, _, _ = i2v
    pipe = model.load()
    assert type(pipe).__name__ == "WanImageToVideoPipeline"
    families.get("wan").finish(pipe)
    clip = load_clip(data / "red.mp4", tuple(range(9)), (32, 32))[None]
    ours = families.get("wan").encode_moments(pipe.vae, clip)
    _, theirs = pipe.prepare_latents(
        clip[:, :, 0], 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"), None
    )
    assert ours["condition"].shape == theirs.shape == (1, 20, 3, 4, 4)
    assert (ours["condition"] - theirs).abs().max().item() < 1e-5
    with torch.no_grad():  # and the moments are the clip's own
        want = pipe.vae.encode(clip).latent_dist.parameters
    assert (ours["moments"] - want).abs().max().item() < 1e-5


def test_the_experts_load_in_diffusers_and_read_the_condition_as_the_pipeline_joins_it(i2v):
    model, _, result, cap = i2v
    out = result.output_dir
    pipe = model.load()
    pipe.load_lora_weights(str(out / "run_high_noise.diffusers.safetensors"))
    pipe.load_lora_weights(str(out / "run_low_noise.safetensors"), load_into_transformer_2=True)
    for theirs, mine in (
        (pipe.transformer, cap.unet.high_noise),
        (pipe.transformer_2, cap.unet.low_noise),
    ):
        assert _lora_count(theirs) == _lora_count(mine) > 0
    for sigma, theirs in ((0.95, pipe.transformer), (0.5, pipe.transformer_2)):
        mine, want = predictions(pipe, cap.unet, theirs, sigma * 1000.0)
        assert (mine - want).abs().max().item() < 1e-5


def test_previews_start_from_the_sample_image(i2v):
    import av

    _, _, result, _ = i2v
    with av.open(str(result.output_dir / "samples" / "step-000006-00.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (32, 32)


def test_previews_without_a_first_frame_are_refused(i2v, tmp_path):
    from lorakit.api import ConfigError

    model, data, _, _ = i2v
    with pytest.raises(ConfigError, match="set sd.video.sample_image"):
        train(tmp_path, model, data, max_steps=1, sample_prompts=["a"], sd={"video": VIDEO})


@pytest.fixture(scope="module")
def i2v21(tmp_path_factory):
    """Wan 2.1 I2V: one transformer that also reads the first frame's CLIP image tokens; the
    LoRA on every linear layer (add_k_proj / add_v_proj: ComfyUI's k_img / v_img)."""
    from lorakit_sd.families.wan.standin import build_tiny_wan

    tmp = tmp_path_factory.mktemp("i2v21")
    model = build_tiny_wan(tmp / "model", i2v=True, clip=True)
    data = write_clips(tmp / "data")
    result, cap = train(
        tmp,
        model,
        data,
        max_steps=4,
        batch_size=2,
        learning_rate=1e-2,
        lora_alpha=8,
        target_modules=["all-linear"],
        sd={"video": VIDEO, "flip_aug": True},
    )
    cap.unet.eval()
    return model, data, result, cap


def test_wan21_caches_the_clip_image_tokens_the_pipeline_encodes(i2v21):
    from lorakit_sd.data.video import load_clip

    from lorakit_sd import families

    model, data, _, _ = i2v21
    pipe = model.load()
    families.get("wan").finish(pipe)
    clip = load_clip(data / "blue.mov", tuple(range(9)), (32, 32))[None]
    ours = families.get("wan").encode_moments(pipe.vae, clip)["image"]
    first = Image.fromarray(((clip[0, :, 0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    with torch.no_grad():
        theirs = pipe.encode_image(first, torch.device("cpu"))
    assert ours.shape == theirs.shape and (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("layout", ["run.safetensors", "run.diffusers.safetensors"])
def test_wan21_files_load_whole_and_read_the_image_tokens_as_the_pipeline(i2v21, layout):
    model, _, result, cap = i2v21
    pipe = model.load()
    pipe.load_lora_weights(str(result.output_dir / layout))
    injected = [n for n, _ in pipe.transformer.named_modules() if n.endswith(".lora_A")]
    assert any(".attn2.add_k_proj" in n for n in injected)  # k_img in ComfyUI's names
    assert len(injected) == _lora_count(cap.unet)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 17, 32, generator=g)  # CLIP tokens: 16 patches and the class token
    mine, want = predictions(pipe, cap.unet, pipe.transformer, 700.0, image)
    assert (mine - want).abs().max().item() < 1e-5
