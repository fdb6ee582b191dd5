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
        injected = [n for n, _ in theirs.named_modules() if n.endswith(".lora_A")]
        assert (
            len(injected) == len([n for n, _ in mine.named_modules() if n.endswith(".lora_A")]) > 0
        )
    hidden = pipe.encode_prompt(
        ["a", "b"], do_classifier_free_guidance=False, max_sequence_length=16
    )[0]
    g = torch.Generator().manual_seed(0)
    noisy, condition = (
        torch.randn(2, 16, 3, 4, 4, generator=g),
        torch.randn(2, 20, 3, 4, 4, generator=g),
    )
    from lorakit_sd.families.transformer_module import FlowTrainModule

    from lorakit_sd import families

    module = FlowTrainModule(families.get("wan"), pipe, cap.unet, None, False, 16, None)
    for sigma, theirs in ((0.95, pipe.transformer), (0.5, pipe.transformer_2)):
        t = torch.full((2,), sigma * 1000.0)
        with torch.no_grad():
            mine = module(noisy, t, hidden=hidden, condition=condition)
            # WanImageToVideoPipeline: latent_model_input = cat([latents, condition], dim=1)
            want = theirs(
                hidden_states=torch.cat([noisy, condition], dim=1),
                timestep=t,
                encoder_hidden_states=hidden,
                return_dict=False,
            )[0]
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
