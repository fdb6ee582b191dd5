"""FLUX.1 and SD3.5 bases as users keep them: BFL's transformer file, SD3.5's all-in-one
file, and a GGUF-quantized FLUX.1 transformer, each with ``sd.base_config`` for the rest.

The files are written from a model with other weights than the config folder's, so a part
read from the folder instead of the file is caught. diffusers is the judge: its
``from_single_file`` reads SD3.5's file; BFL's split is checked against diffusers' own
``convert_flux_transformer_checkpoint_to_diffusers`` at FLUX.1's real width.
"""

from __future__ import annotations

import pytest
import torch
from lorakit_sd.testing import write_tiny_images


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    """Config folders (seed 0) and single files written from seed-1 models."""
    from lorakit_sd.families.transformer_standin import (
        build_tiny_flow,
        build_tiny_flux,
        build_tiny_sd3,
        write_flux_single_file,
        write_sd3_single_file,
    )

    from lorakit.testing import one_thread

    root = tmp_path_factory.mktemp("files")
    with one_thread():
        models = {f: build_tiny_flow(root / f, f) for f in ("flux1", "sd3")}
        flux, sd3 = build_tiny_flux(seed=1), build_tiny_sd3(seed=1)
        files = {
            "flux1": write_flux_single_file(flux, root / "flux1-dev.safetensors"),
            "gguf": write_flux_single_file(flux, root / "flux1-dev-Q8_0.gguf", gguf=True),
            "sd3": write_sd3_single_file(sd3, root / "sd3.5_medium.safetensors"),
        }
    return models, files, {"flux1": flux, "sd3": sd3}


def _load(path, config):
    import lorakit_sd.plugin
    from lorakit_sd.models import load_base

    from lorakit.plugins import build_plugins, set_plugins

    set_plugins(build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)]))
    try:
        return load_base(str(path), base_config=str(config))
    finally:
        set_plugins(None)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_bfl_split_matches_diffusers_conversion_at_flux_width():
    """Our BFL -> diffusers split equals diffusers' converter (which assumes 3072 wide)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    from lorakit_sd.families.flux1.single_file import bfl_to_diffusers, diffusers_to_bfl

    # FLUX.1's real row counts, one column each: every row carries its own number
    h, mlp = 3072, 4 * 3072
    rows = {
        "img_in": h,
        "txt_in": h,
        "time_in.in_layer": h,
        "time_in.out_layer": h,
        "vector_in.in_layer": h,
        "vector_in.out_layer": h,
        "guidance_in.in_layer": h,
        "guidance_in.out_layer": h,
        "final_layer.linear": 64,
        "final_layer.adaLN_modulation.1": 2 * h,
    }
    for side in ("img", "txt"):
        rows |= {
            f"double_blocks.0.{side}_attn.qkv": 3 * h,
            f"double_blocks.0.{side}_attn.proj": h,
            f"double_blocks.0.{side}_mlp.0": mlp,
            f"double_blocks.0.{side}_mlp.2": h,
            f"double_blocks.0.{side}_mod.lin": 6 * h,
        }
    rows |= {
        "single_blocks.0.linear1": 3 * h + mlp,
        "single_blocks.0.linear2": h,
        "single_blocks.0.modulation.lin": 3 * h,
    }
    state, n = {}, 0
    for name, count in rows.items():
        for kind in ("weight", "bias"):
            state[f"{name}.{kind}"] = torch.arange(n, n + count, dtype=torch.float64)[:, None]
            n += count
    for name in ("double_blocks.0.img_attn", "double_blocks.0.txt_attn", "single_blocks.0"):
        for norm in ("query_norm", "key_norm"):
            state[f"{name}.norm.{norm}.scale"] = torch.arange(n, n + 128, dtype=torch.float64)
            n += 128
    theirs = convert_flux_transformer_checkpoint_to_diffusers(
        {f"model.diffusion_model.{k}": v for k, v in state.items()}
    )
    ours = bfl_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    back = diffusers_to_bfl(ours, 1, 1)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in back)


def test_bfl_transformer_file_loads_with_base_config(flows):
    models, files, source = flows
    model = _load(files["flux1"], models["flux1"].diffusers_dir)
    assert (model.family, model.source) == ("flux1", "single_file")
    config = models["flux1"].load()
    assert _same(model.pipe.transformer, source["flux1"].transformer)  # from the file
    assert not _same(model.pipe.transformer, config.transformer)
    for part in ("vae", "text_encoder", "text_encoder_2"):  # from sd.base_config
        assert _same(getattr(model.pipe, part), getattr(config, part)), part


def test_sd35_all_in_one_file_loads_every_part_from_the_file(flows):
    models, files, source = flows
    model = _load(files["sd3"], models["sd3"].diffusers_dir)
    assert (model.family, model.source) == ("sd3", "single_file")
    config = models["sd3"].load()
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert _same(getattr(model.pipe, part), getattr(source["sd3"], part)), part
        assert not _same(getattr(model.pipe, part), getattr(config, part)), part


def test_gguf_flux_transformer_loads_quantized_and_trains(flows, tmp_path):
    """A Q8_0 GGUF transformer stays quantized (diffusers' GGUFLinear), PEFT wraps it, its
    output is the float file's to Q8_0 precision, and a LoRA trained on it loads in
    diffusers onto the float transformer."""
    from diffusers.quantizers.gguf.utils import GGUFLinear
    from flow_helpers import train

    models, files, source = flows
    model = _load(files["gguf"], models["flux1"].diffusers_dir)
    q = model.pipe.transformer
    assert isinstance(q.transformer_blocks[0].attn.to_q, GGUFLinear)
    want, got = _flux_out(source["flux1"].transformer), _flux_out(q)
    err = ((got - want).norm() / want.norm()).item()
    assert 0 < err < 0.02, err  # quantized (not the float weights), to Q8_0's precision
    data = write_tiny_images(tmp_path / "data", 2)
    config_dir = models["flux1"].diffusers_dir
    result, cap = train(
        tmp_path,
        models["flux1"],
        data,
        max_steps=2,
        batch_size=2,
        export_formats=["diffusers"],
        base_model=str(files["gguf"]),
        sd={"base_config": str(config_dir)},
    )
    assert isinstance(cap.unet.transformer_blocks[0].attn.to_q.base_layer, GGUFLinear)
    pipe = source["flux1"]
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    injected = [n for n, _ in pipe.transformer.named_modules() if n.endswith(".lora_A")]
    trained = [n for n, _ in cap.unet.named_modules() if n.endswith(".lora_A")]
    assert len(injected) == len(trained) > 0


def _flux_out(transformer):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 16, 64, generator=g),
            encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
            pooled_projections=torch.randn(1, 32, generator=g),
            timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(8, 3),
            guidance=torch.ones(1),
            return_dict=False,
        )[0]
