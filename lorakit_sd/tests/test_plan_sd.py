"""``lorakit plan`` for the sd backend plans the model training builds (issue 25).

The judge is the real backend: the trainable parameters the plan traces must be the ones
``SDBackend.setup`` makes trainable for the same config (LoCon's 3x3 convolutions at
``sd.conv_rank``, LoHa / LoKr / DoRA, trained text encoders, the flow families).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lorakit_sd.families.transformer_standin import build_tiny_flow

    from lorakit.testing import one_thread

    with one_thread():
        return build_tiny_flow(tmp_path_factory.mktemp("flux") / "flux1", "flux1")


def _config(model: Any, tmp: Path, plugins: Any, **keys: Any) -> Any:
    from lorakit_sd.testing import tiny_config, write_tiny_images

    from lorakit.config import load_config

    images = write_tiny_images(tmp / "data", 2)
    sd = {"max_sequence_length": 16, "bucket_step": 16, **keys.pop("sd", {})}
    data = tiny_config(model, images, tmp / "run", trackers=[], sd=sd, **keys)
    return load_config(data=data, registries=plugins.registries)


def _trained_by_setup(config: Any, tmp: Path, plugins: Any) -> int:
    """Trainable parameters of the models the real backend's setup adapts."""
    import torch
    from accelerate import Accelerator

    from lorakit.api import TrainContext

    registries = plugins.registries
    backend = registries.backends.get("sd").create(config)
    ctx = TrainContext(
        config=config,
        accelerator=Accelerator(cpu=True),
        output_dir=tmp / "out",
        cache_dir=tmp / "cache",
        registries=registries,
        weight_dtype=torch.float32,
        log=lambda *a, **k: None,
    )
    backend.validate(ctx)
    backend.setup(ctx)
    params = {id(p): p for m in (backend.unet, *backend.text_encoders) for p in m.parameters()}
    count = sum(p.numel() for p in params.values() if p.requires_grad)
    backend.teardown()
    return count


def _planned(config: Any, plugins: Any) -> int:
    from lorakit.planning import make_plan

    return make_plan(config, registries=plugins.registries, both=False).estimate.trainable_params


CASES = {
    "locon": ("sd1", {"network": "locon", "conv_rank": 2, "conv_alpha": 1}),
    "loha": ("sd1", {"network": "loha", "conv_rank": 2}),
    "lokr": ("sd1", {"network": "lokr", "lokr_factor": 2}),
    "dora": ("sd1", {"network": "dora"}),
    "sdxl-text": ("sdxl", {"train_text_encoder": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_counts_the_parameters_setup_trains(tmp_path, tiny_models, sd_plugins, case):
    family, sd = CASES[case]
    config = _config(tiny_models[family], tmp_path, sd_plugins, sd=sd)
    real = _trained_by_setup(config, tmp_path, sd_plugins)
    assert _planned(config, sd_plugins) == real > 0


def test_locon_plan_counts_the_conv_lora(tmp_path, tiny_models, sd_plugins):
    """LoCon's convolutions add parameters: the plan counts more than plain LoRA's."""
    model = tiny_models["sd1"]
    plain = _planned(_config(model, tmp_path, sd_plugins, sd={"network": "lora"}), sd_plugins)
    config = _config(model, tmp_path, sd_plugins, sd={"network": "locon", "conv_rank": 2})
    assert _planned(config, sd_plugins) > plain


def test_flux_plan_counts_the_parameters_setup_trains(tmp_path, flux, sd_plugins):
    config = _config(flux, tmp_path, sd_plugins, sd={"train_text_encoder": True})
    real = _trained_by_setup(config, tmp_path, sd_plugins)
    assert _planned(config, sd_plugins) == real > 0
