"""The shipped sd templates, as ``lorakit config init`` writes them, train on CPU (issue 24).

Each template (sd15, sdxl, flux1, sd35, flux2, flux2-klein) is written by ``lorakit config init``, and only the
model path (the tiny model's diffusers folder), the data and output paths, the resolution
(32 px) and the step count are replaced; at 32 px the templates' default 64-pixel bucket
step is refused by validation, so ``sd.bucket_step`` follows the resolution (32); keys that
need a CUDA GPU (FLUX.2-dev's ``sd.group_offload``) are removed. The run
goes through ``lorakit train`` in-process with the template's ``mixed_precision: bf16``
(autocast on CPU: seen at the model's Linear outputs), ``gradient_checkpointing: true``
(diffusers' own flag on the trained model) and the template's optimizer.

What a 3-step run can show: with the templates' learning rate (1e-4, and 50 warm-up steps
for sd15/sdxl) a tiny random model's loss does not fall measurably in a few steps, so the
run is held to finite losses and a changed LoRA (every adapted module's delta non-zero).
diffusers is the judge of the files: each one written loads through the tiny pipeline's
``load_lora_weights``, every module the run trained arrives (one per file entry), and each
loaded module's delta (PEFT's ``get_delta_weight``) equals the trained one. FLUX.1's kohya
file is left to test_flow_families.py: diffusers' kohya FLUX.1 reader hard-codes FLUX.1-dev's
widths (3072 / 12288), which a tiny model does not have.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lorakit_sd.testing import write_tiny_images
from sd_helpers import Capture, lora_keys

from lorakit.testing import run_cli

STEPS = 3
TEMPLATES = {
    "sd15": "sd1",
    "sdxl": "sdxl",
    "flux1": "flux1",
    "sd35": "sd3",
    "flux2": "flux2",
    "flux2-klein": "flux2_klein",
}
#: keys that need a CUDA GPU (refused here in one line, tested beside their options)
GPU_ONLY = ("group_offload", "base_quantization")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Any:
    """The templates' bf16 sets accelerate's process-wide state, which a later in-process
    ``Accelerator(mixed_precision="no")`` may not change: each test starts and ends without."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lorakit_sd.families.flux2.standin import build_tiny_flux2
    from lorakit_sd.families.transformer_standin import build_tiny_flow

    root = tmp_path_factory.mktemp("flow")
    models = {family: build_tiny_flow(root / family, family) for family in ("flux1", "sd3")}
    models.update({f: build_tiny_flux2(root / f, f) for f in ("flux2", "flux2_klein")})
    return models


def _deltas(module: Any) -> dict[str, torch.Tensor]:
    """Every PEFT LoRA layer's weight delta (scale included), by module name."""
    out = {}
    for name, layer in module.named_modules():
        if hasattr(layer, "get_delta_weight") and getattr(layer, "lora_A", None):
            [adapter] = list(layer.lora_A.keys())
            out[name] = layer.get_delta_weight(adapter).detach().float()
    return out


class LinearDtypes:
    """The output dtypes of every Linear layer that runs during training."""

    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            self.seen.add(output.dtype)


def _train_template(
    tmp_path: Path, name: str, model: Any, capsys: Any, data: Path | None = None
) -> tuple[dict, Any, set]:
    """``config init`` + the replacements + ``lorakit train``: (template, capture, dtypes).

    ``data``: the training folder (default four captioned images)."""
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    cap = Capture()
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin), ("c", cap)])
    set_plugins(plugins)
    dtypes = LinearDtypes()
    hook = torch.nn.modules.module.register_module_forward_hook(dtypes)
    try:
        written = tmp_path / f"{name}.yaml"
        code, _, err = run_cli(capsys, "config", "init", "-b", "sd", "-t", name, "-o", written)
        assert code == 0, err
        template = yaml.safe_load(written.read_text())
        config = {**template, "sd": dict(template["sd"])}
        config.update(
            base_model=str(model.diffusers_dir),
            train_data_dir=str(data or write_tiny_images(tmp_path / "data", 4)),
            output_dir=str(tmp_path / "out"),
            max_steps=STEPS,
        )
        config["sd"].update(resolution=32, bucket_step=32)
        for key in GPU_ONLY:
            config["sd"].pop(key, None)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        code, out, err = run_cli(capsys, "train", "--config", path, "--no-progress")
        assert code == 0, out + err
    finally:
        hook.remove()
        set_plugins(None)
    return template, cap, dtypes.seen


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_template_trains_on_cpu_and_diffusers_loads_its_files(
    name, tiny_models, flow_models, tmp_path, capsys
):
    family = TEMPLATES[name]
    check_template(name, family, {**tiny_models, **flow_models}[family], tmp_path, capsys)


def check_template(
    name: str,
    family: str,
    model: Any,
    tmp_path: Path,
    capsys: Any,
    data: Path | None = None,
    untrained: list[str] | None = None,
) -> None:
    """The template ``name`` trains ``model`` as written and diffusers loads its files
    (``untrained``: the adapted modules no gradient reaches, by the architecture)."""
    template, cap, dtypes = _train_template(tmp_path, name, model, capsys, data)
    assert template["mixed_precision"] == "bf16" and template["gradient_checkpointing"] is True
    out = tmp_path / "out"
    ran = yaml.safe_load((out / "config.yaml").read_text())
    template["learning_rate"] = float(template["learning_rate"])  # "1e-4": YAML 1.1 reads a str
    for key in (
        "optimizer",
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "lora_rank",
        "lora_alpha",
        "batch_size",
        "gradient_accumulation_steps",
        "mixed_precision",
        "gradient_checkpointing",
    ):
        assert ran[key] == template[key], key
    assert torch.bfloat16 in dtypes  # autocast ran the Linears in bf16
    trained = cap.unet
    assert trained.is_gradient_checkpointing  # diffusers' own flag
    assert {p.dtype for p in trained.parameters() if p.requires_grad} == {torch.float32}

    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    want = _deltas(trained)
    still = [k for k, d in want.items() if d.abs().max() == 0]
    # SD3's last joint block is context_pre_only: its text-token outputs are dropped, so the
    # text queries (add_q_proj) get no gradient (diffusers' own SD3 LoRA script adapts it too)
    last = f"transformer_blocks.{getattr(trained.config, 'num_layers', 0) - 1}.attn.add_q_proj"
    if untrained is None:
        untrained = [last] if family == "sd3" else []
    assert want and still == untrained, still  # the rest moved

    files = sorted(out.glob("*.safetensors"))
    expected = {"out.diffusers.safetensors"} | ({"out.safetensors"} if family != "sd3" else set())
    assert {f.name for f in files} == expected
    for file in files:
        if family in ("flux1", "kontext") and file.name == "out.safetensors":
            continue  # see the module docstring
        entries = {k.rsplit(".", 2)[0] for k in lora_keys(file)[0]}
        pipe = model.load()
        pipe.load_lora_weights(str(file))
        got = _deltas(pipe.unet if hasattr(pipe, "unet") else pipe.transformer)
        text = [_deltas(m) for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m]
        assert not any(text), file.name  # train_text_encoder: false in every template
        # FLUX.2's ComfyUI layout fuses a double block's q/k/v into one entry
        fused = family.startswith("flux2") and file.name == "out.safetensors"
        assert set(got) == set(want) and (fused or len(entries) == len(want)), file.name
        for key, delta in want.items():
            scale = delta.abs().max()
            assert (got[key] - delta).abs().max() <= 1e-5 * scale, (file.name, key)
