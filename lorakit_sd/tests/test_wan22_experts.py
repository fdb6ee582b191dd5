"""Wan 2.2 A14B's two experts: routed by timestep as ``WanPipeline`` routes them, one file per
expert, each loaded by diffusers into its own transformer (``load_into_transformer_2``)."""

from __future__ import annotations

import pytest
import torch
from flow_helpers import train
from test_wan_family import output, write_clips

VIDEO = {"frames": [5, 9]}


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    from lorakit_sd.families.wan.standin import build_tiny_wan

    tmp = tmp_path_factory.mktemp("a14b")
    model = build_tiny_wan(tmp / "model", experts=True)
    data = write_clips(tmp / "data")
    common = {"max_steps": 6, "batch_size": 2, "learning_rate": 1e-2, "lora_alpha": 8}
    both = train(tmp / "both", model, data, sd={"video": VIDEO}, **common)
    high = train(
        tmp / "high", model, data, sd={"video": {**VIDEO, "experts": "high_noise"}}, **common
    )
    return model, both, high


def _x(seed):
    return torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def _injected(transformer):
    return sum(1 for name, _ in transformer.named_modules() if name.endswith(".lora_A"))


def test_each_expert_has_its_file_and_diffusers_loads_it_into_that_expert(a14b):
    from sd_helpers import lora_keys

    model, (result, cap), _ = a14b
    out = result.output_dir
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == [
        "run_high_noise.diffusers.safetensors",
        "run_high_noise.safetensors",
        "run_low_noise.diffusers.safetensors",
        "run_low_noise.safetensors",
    ]
    experts = cap.unet
    experts.eval()
    pipe = model.load()
    pipe.load_lora_weights(str(out / "run_high_noise.diffusers.safetensors"))
    pipe.load_lora_weights(str(out / "run_low_noise.safetensors"), load_into_transformer_2=True)
    keys, _ = lora_keys(out / "run_high_noise.diffusers.safetensors")
    assert _injected(pipe.transformer) == len(keys) // 2 == _injected(experts.high_noise)
    assert _injected(pipe.transformer_2) == _injected(experts.low_noise) > 0
    for mine, theirs, sigma in (
        (experts.high_noise, pipe.transformer, 0.95),
        (experts.low_noise, pipe.transformer_2, 0.3),
    ):
        want = output(pipe, mine, _x(0), sigma)
        assert (output(pipe, theirs, _x(0), sigma) - want).abs().max().item() < 1e-5
    # the two experts learned different things: their files differ
    from safetensors.torch import load_file

    high = load_file(str(out / "run_high_noise.diffusers.safetensors"))
    low = load_file(str(out / "run_low_noise.diffusers.safetensors"))
    assert high.keys() == low.keys()
    assert max((high[k] - low[k]).abs().max().item() for k in high) > 1e-4


def test_samples_go_to_the_expert_the_pipeline_would_use(a14b):
    """``WanPipeline``: ``transformer`` while t >= boundary_ratio · num_train_timesteps,
    ``transformer_2`` below; a batch holding both is split the same way."""
    model, (_, cap), _ = a14b
    experts = cap.unet
    pipe = model.load()
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    assert boundary == 875.0
    x = _x(1)
    hidden = pipe.encode_prompt(
        ["a", "b"], do_classifier_free_guidance=False, max_sequence_length=16
    )[0]
    t = torch.tensor([900.0, 500.0])
    with torch.no_grad():
        routed = experts(hidden_states=x, timestep=t, encoder_hidden_states=hidden)[0]
        first = experts.high_noise(x[:1], t[:1], hidden[:1], return_dict=False)[0]
        second = experts.low_noise(x[1:], t[1:], hidden[1:], return_dict=False)[0]
    assert torch.equal(routed, torch.cat([first, second]))


def test_one_expert_trains_on_its_side_of_the_boundary_only(a14b):
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    model, _, (result, cap) = a14b
    assert sorted(p.name for p in result.output_dir.glob("*.safetensors")) == [
        "run_high_noise.diffusers.safetensors",
        "run_high_noise.safetensors",
    ]
    assert _injected(cap.unet.high_noise) > 0
    assert not hasattr(cap.unet, "low_noise")
    pipe = model.load()
    section = SDSection(video={"experts": "high_noise"})
    family = families.get("wan")
    objective = family.objective(pipe, section)
    x0 = torch.randn(64, 16, 3, 4, 4)
    torch.manual_seed(7)
    draw = objective.draw(x0)
    torch.manual_seed(7)
    torch.randn(x0.shape)  # the noise is drawn first
    u = compute_density_for_timestep_sampling("logit_normal", 64, 0.0, 1.0, 1.29)
    shifted = 3 * u / (1 + 2 * u)
    assert torch.allclose(draw.sigmas, 0.875 + 0.125 * shifted, atol=1e-6)
    assert bool((draw.timesteps >= 875).all())
    low = family.objective(pipe, SDSection(video={"experts": "low_noise"}))
    assert bool((low.draw(torch.randn(64, 16, 3, 4, 4)).timesteps < 875).all())


def test_experts_on_a_one_transformer_model_is_refused(tmp_path, a14b):
    from lorakit_sd.families.wan.standin import build_tiny_wan

    from lorakit.api import ConfigError

    model = build_tiny_wan(tmp_path / "t2v")
    data = write_clips(tmp_path / "data")
    with pytest.raises(ConfigError, match="sd.video.experts high_noise: this model has one"):
        train(tmp_path, model, data, max_steps=1, sd={"video": {**VIDEO, "experts": "high_noise"}})


def test_ti2v_5b_trains_text_to_video_as_its_pipeline_denoises(tmp_path):
    """Wan 2.2 TI2V-5B (48-channel latents of the 16x VAE) as text-to-video: its pipeline
    passes one timestep per token (``expand_timesteps``), all equal; the step's single
    timestep per sample gives the same prediction, and the file loads whole in diffusers."""
    from lorakit_sd.families.wan.standin import build_tiny_wan
    from sd_helpers import lora_keys

    model = build_tiny_wan(tmp_path / "5b", five_b=True)
    data = write_clips(tmp_path / "data")
    result, cap = train(
        tmp_path,
        model,
        data,
        max_steps=2,
        batch_size=2,
        learning_rate=1e-2,
        sd={"video": VIDEO, "resolution": 64, "bucket_step": 32},
    )
    pipe = model.load()
    assert pipe.config.expand_timesteps and pipe.vae.config.z_dim == 48
    path = result.output_dir / "run.diffusers.safetensors"
    pipe.load_lora_weights(str(path))
    keys, _ = lora_keys(path)
    assert _injected(pipe.transformer) == len(keys) // 2 == _injected(cap.unet)
    x = torch.randn(2, 48, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    hidden = pipe.encode_prompt(
        ["a", "b"], do_classifier_free_guidance=False, max_sequence_length=16
    )[0]
    t = 600.0
    # WanPipeline with expand_timesteps: (mask[0][0][:, ::2, ::2] * t).flatten() per sample
    tokens = (torch.ones(3, 4, 4)[:, ::2, ::2] * t).flatten().unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        theirs = pipe.transformer(x, tokens, hidden, return_dict=False)[0]
        ours = cap.unet.eval()(x, torch.full((2,), t), hidden, return_dict=False)[0]
    assert (ours - theirs).abs().max().item() < 1e-5
