"""Every network type on the transformer families (SD3, FLUX.1): LoHa, LoKr and DoRA train,
their LyCORIS-format file (``lycoris_<diffusers path>`` stems) reproduces the trained
transformer through lycoris-lora's own loader, and DoRA's diffusers-format file through
diffusers' load_lora_weights."""

from __future__ import annotations

import pytest
import torch
from flow_helpers import train, transformer_output
from lorakit_sd.testing import write_tiny_images


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory):
    from lorakit_sd.families.transformer_standin import build_tiny_flow

    root = tmp_path_factory.mktemp("flow")
    return {family: build_tiny_flow(root / family, family) for family in ("flux1", "sd3")}


def _output(pipe, transformer):
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return transformer_output(pipe, transformer, latents, 0.6, ["a red cat", "a dog, park"])


def _lycoris_apply(tensors, transformer):
    from lycoris.modules import get_module, make_module

    table = {"lycoris_" + n.replace(".", "_"): m for n, m in transformer.named_modules()}
    for stem in sorted({k.split(".")[0] for k in tensors}):
        kind, params = get_module(tensors, stem)
        assert kind is not None, stem
        make_module(kind, params, stem, table[stem]).apply_to()


CASES = [(f, n) for f in ("sd3", "flux1") for n in ("loha", "lokr", "dora")]


@pytest.mark.parametrize(("family", "network"), CASES)
def test_network_types_on_transformer_families(flow_models, tmp_path, family, network):
    from lorakit_sd.networks import file_network
    from safetensors.torch import load_file

    model = flow_models[family]
    data = write_tiny_images(tmp_path / "data", 2)
    result, cap = train(
        tmp_path,
        model,
        data,
        max_steps=2,
        learning_rate=2e-2,
        lora_alpha=2.0,
        sd={"network": network},
    )
    run = result.output_dir
    tensors = load_file(str(run / "run.safetensors"))
    assert tensors and all(k.startswith("lycoris_") for k in tensors)
    assert file_network(tensors) == network
    cap.unet.eval()
    pipe = model.load()
    base = _output(pipe, pipe.transformer)
    want = _output(pipe, cap.unet)
    assert (want - base).abs().max().item() > 1e-4  # training changed the output
    _lycoris_apply(tensors, pipe.transformer)
    assert (_output(pipe, pipe.transformer) - want).abs().max().item() < 1e-4
    # lorakit's own reader (what sample and merge apply) reads the file to the same model
    from lorakit_sd.lorafiles.apply import apply_to_model
    from lorakit_sd.models import BaseModel

    fresh = model.load()
    [read] = apply_to_model(
        BaseModel(fresh, family, "diffusers", ""), [(str(run / "run.safetensors"), 1.0)]
    )
    assert read.family == family
    assert (_output(fresh, fresh.transformer) - want).abs().max().item() < 1e-4
    diffusers_file = run / "run.diffusers.safetensors"
    assert diffusers_file.exists() == (network == "dora")
    if network == "dora":  # diffusers reads DoRA: the magnitudes and use_dora
        pipe = model.load()
        pipe.load_lora_weights(str(diffusers_file))
        assert pipe.transformer.peft_config["default_0"].use_dora
        written = load_file(str(diffusers_file))
        assert len([n for n, _ in pipe.transformer.named_parameters() if "lora_" in n]) == len(
            written
        )
        torch.testing.assert_close(_output(pipe, pipe.transformer), want, atol=1e-5, rtol=1e-5)


def test_one_table_gives_the_config_choices_and_the_docs_table():
    import re
    import typing
    from pathlib import Path

    from lorakit_sd.config import SDSection
    from lorakit_sd.networks import NETWORKS

    assert typing.get_args(SDSection.model_fields["network"].annotation) == tuple(NETWORKS)
    doc = Path(__file__).resolve().parents[2] / "docs" / "sd.md"
    if not doc.is_file():
        pytest.skip("docs/ is not next to this checkout")
    rows = re.findall(r"^\| `(\w+)`(?: \(default\))? \| .* \| ([^|]+) \|$", doc.read_text(), re.M)
    table = {name: loads.strip() for name, loads in rows if name in NETWORKS}
    assert table == {name: loads for name, (_, loads) in NETWORKS.items()}
