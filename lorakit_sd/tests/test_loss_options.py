"""SD loss options against diffusers' own functions.

The judges: ``diffusers.training_utils.compute_snr`` with the min-SNR weights written here as
diffusers' ``train_text_to_image_lora.py`` and kohya's ``apply_snr_weight`` compute them,
``DDPMScheduler.get_velocity`` for the v-prediction target, and a scheduler built here from
the model folder's own ``scheduler_config.json``. What the run did is read at diffusers'
seams: the arguments of ``DDPMScheduler.add_noise`` and the UNet's output (a forward hook).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import torch
from sd_helpers import first_losses, train_tiny

import lorakit


class Seen:
    """Records each step's clean latents, noise, timesteps and the UNet's prediction."""

    def __init__(self) -> None:
        self.noised: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.preds: list[torch.Tensor] = []

    @lorakit.hookimpl
    def on_train_start(self, run: Any) -> None:
        def hook(module: Any, args: Any, output: Any) -> None:
            self.preds.append(output.sample.detach().float().clone())

        run.backend.unet.register_forward_hook(hook)


def _record(monkeypatch: Any, seen: Seen) -> None:
    from diffusers import DDPMScheduler

    real = DDPMScheduler.add_noise

    def add_noise(self: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
        seen.noised.append((latents.detach().clone(), noise.detach().clone(), timesteps.clone()))
        return real(self, latents, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", add_noise)


def _run(tmp_path: Any, monkeypatch: Any, model: Any, data: Any, **sd: Any) -> tuple[Seen, Any]:
    import sd_helpers

    seen = Seen()
    _record(monkeypatch, seen)
    original = sd_helpers.Capture
    monkeypatch.setattr(sd_helpers, "Capture", lambda: seen)
    try:
        result, _ = train_tiny(
            tmp_path,
            model,
            data,
            capture=True,
            max_steps=3,
            batch_size=2,
            export_formats=["kohya"],
            sd=sd,
        )
    finally:
        sd_helpers.Capture = original
    return seen, result


def _v_model(tmp_path: Any, model: Any) -> Any:
    """A copy of the tiny model whose scheduler says v_prediction (an SD2-style model)."""
    from dataclasses import replace

    folder = tmp_path / "v-model"
    shutil.copytree(model.diffusers_dir, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["prediction_type"] = "v_prediction"
    path.write_text(json.dumps(config))
    return replace(model, diffusers_dir=folder)


@pytest.mark.parametrize(
    ("case", "gamma"),
    [("epsilon", 5.0), ("v_from_scheduler", 5.0), ("v_from_scheduler", None)],
)
def test_loss_is_the_min_snr_weighted_error_against_diffusers_targets(
    tiny_models, images4, tmp_path, monkeypatch, case, gamma
):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    model = tiny_models["sd1"]
    if case == "v_from_scheduler":
        model = _v_model(tmp_path, model)  # sd.prediction_type unset: read from the scheduler
    offset = 1.0 if case == "epsilon" else 0.0  # kohya's noise_offset: N(0, offset²) per channel
    seen, result = _run(
        tmp_path, monkeypatch, model, images4, min_snr_gamma=gamma, noise_offset=offset
    )
    scheduler = DDPMScheduler.from_pretrained(model.diffusers_dir, subfolder="scheduler")
    v = scheduler.config.prediction_type == "v_prediction"
    assert v is (case != "epsilon")
    logged = first_losses(result.output_dir)
    assert len(seen.noised) == len(seen.preds) == len(logged) == 3
    for (latents, noise, t), pred, loss in zip(seen.noised, seen.preds, logged, strict=True):
        target = scheduler.get_velocity(latents, noise, t) if v else noise
        per_sample = ((pred - target.float()) ** 2).mean(dim=(1, 2, 3))
        if gamma is not None:
            snr = compute_snr(scheduler, t)
            weight = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
            weight = weight / (snr + 1) if v else weight / snr
            per_sample = per_sample * weight
        assert loss == pytest.approx(per_sample.mean().item(), rel=1e-5)
    # offset noise: each (sample, channel) map's mean has variance offset² + 1/pixels
    noises = [n for _, n, _ in seen.noised]  # batches may come from different buckets
    means = torch.cat([n.mean(dim=(2, 3)).flatten() for n in noises])
    pixels = min(n.shape[2] * n.shape[3] for n in noises)
    expected = offset**2 + 1 / pixels
    assert 0.4 * (offset**2) < means.var().item() < 2.0 * expected
    residual = torch.cat([(n - n.mean(dim=(2, 3), keepdim=True)).flatten() for n in noises])
    assert residual.var().item() == pytest.approx(1.0, abs=0.05)
