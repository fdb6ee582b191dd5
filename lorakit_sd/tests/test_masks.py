"""Masked loss (issue 27, item 3): masks from sd.conditioning_data_dir or the alpha channel,
fitted as the image is, weighting the loss per latent pixel as sd-scripts'
``apply_masked_loss`` does (``loss * interpolate(mask, latent size, "area")``, then the mean
over every element), for a DDPM family and a flow-matching one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lorakit_sd.testing import write_tiny_images
from PIL import Image

import lorakit

SIZE = 32  # the tiny models' resolution


def pattern(mirrored: bool = False) -> np.ndarray:
    """A mask: columns 0-15 learned (255), 16-23 at 0.4 (102), 24-31 ignored (0)."""
    row = np.array([255] * 16 + [102] * 8 + [0] * 8, dtype=np.uint8)
    return np.tile(row[::-1] if mirrored else row, (SIZE, 1))


def write_masks(folder, n: int):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(pattern(), "L").save(folder / f"img_{i:03d}.png")
    return folder


def latent_mask(factor: int) -> torch.Tensor:
    """The pattern averaged over factor × factor blocks (what area resizing means)."""
    m = pattern().astype(np.float64) / 255.0
    h, w = m.shape
    return torch.from_numpy(m.reshape(h // factor, factor, w // factor, factor).mean((1, 3)))


class LossProbe:
    """The model's prediction (its gradient kept) and the step's logged loss."""

    def __init__(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.losses: list[float] = []

    def _keep(self, module, args, output):
        output.retain_grad()
        self.preds.append(output)

    @lorakit.hookimpl
    def on_train_start(self, run):
        run.backend.trainable_module().register_forward_hook(self._keep)

    @lorakit.hookimpl
    def on_step_end(self, run, step, metrics):
        self.losses.append(metrics["loss"])


def _train(tmp, model, data, plugin, **overrides):
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin), ("p", plugin)])
    set_plugins(plugins)
    try:
        cfg = tiny_config(model, data, tmp / "run", **overrides)
        return train(load_config(data=cfg, registries=plugins.registries), progress=False)
    finally:
        set_plugins(None)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from lorakit_sd.families.transformer_standin import build_tiny_flow

    root = tmp_path_factory.mktemp("flow")
    return {f: build_tiny_flow(root / f, f) for f in ("flux1", "sd3")}


CASES = [(f, c) for f in ("sd1", "flux1") for c in (True, False)] + [("sdxl", True), ("sd3", True)]


@pytest.mark.parametrize(("family", "cached"), CASES)
def test_masked_out_latent_pixels_get_no_gradient_and_the_loss_is_the_masked_mse(
    tiny_models, request, tmp_path, monkeypatch, family, cached
):
    import lorakit_sd.data.masks as masks

    flow_family = family in ("flux1", "sd3")
    model = request.getfixturevalue("flow")[family] if flow_family else tiny_models[family]
    data = write_tiny_images(tmp_path / "data", 2)
    mask_dir = write_masks(tmp_path / "masks", 2)
    seen: list[dict] = []
    real = masks.apply_mask

    def spy(draw, mask, flip):  # what the real loss is computed from, then the real thing
        weight = None if draw.weight is None else draw.weight.detach().clone()
        seen.append({"target": draw.target.detach().clone(), "weight": weight, "flip": flip})
        real(draw, mask, flip)

    monkeypatch.setattr(masks, "apply_mask", spy)
    probe = LossProbe()
    sd = {"conditioning_data_dir": str(mask_dir), "flip_aug": True, "cache_latents": cached}
    if flow_family:
        sd.update(max_sequence_length=16, bucket_step=16, loss_weighting="cosmap")
    _train(tmp_path, model, data, probe, max_steps=1, batch_size=2, sd=sd, seed=3)
    assert len(probe.preds) == len(seen) == len(probe.losses) == 1
    pred, step = probe.preds[0], seen[0]
    grad = pred.grad
    assert grad is not None and pred.ndim == 4
    factor = SIZE // pred.shape[-1]
    flips = step["flip"]
    assert flips is not None  # flip_aug: the mask is mirrored with its image
    want = []
    for i in range(2):
        m = latent_mask(factor)
        if flips[i]:  # mirrored with its image
            m = m.flip(-1)
        outside = (m == 0).expand_as(grad[i])
        assert outside.any() and (m > 0).any()
        assert torch.count_nonzero(grad[i][outside]) == 0  # no gradient where the mask is 0
        assert grad[i][~outside].abs().max() > 0
        w = 1.0 if step["weight"] is None else step["weight"][i].double()
        err = (pred[i].detach().double() - step["target"][i].double()) ** 2
        want.append((w * m * err).mean())
    assert probe.losses[0] == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)


def test_a_mask_is_fitted_exactly_as_its_image(tmp_path):
    """Scaled to cover the bucket, cropped at the same offset (center or random) — the mask
    file and the alpha channel equal the image's own pixels fitted by load_pixels."""
    from lorakit_sd.data.buckets import fit, load_pixels
    from lorakit_sd.data.masks import load_mask

    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    Image.fromarray(np.stack([values] * 3, -1), "RGB").save(tmp_path / "grey.png")
    Image.fromarray(values, "L").save(tmp_path / "mask.png")
    rgba = np.concatenate([np.full((40, 56, 3), 90, np.uint8), values[..., None]], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    bucket = (32, 32)
    rw, rh, left, top = fit((56, 40), bucket)
    assert (rw, rh) != bucket  # scaled and cropped
    for crop in (None, (0, 0), (rw - 32, rh - 32)):
        image = (load_pixels(str(tmp_path / "grey.png"), bucket, crop)[:1] + 1) / 2
        for source in (str(tmp_path / "mask.png"), f"alpha:{tmp_path / 'alpha.png'}"):
            mask = load_mask(source, bucket, crop)
            assert mask.shape == (1, 32, 32)
            torch.testing.assert_close(mask, image, atol=1e-6, rtol=0)
    # an image without alpha is learned everywhere
    assert torch.equal(load_mask(f"alpha:{tmp_path / 'grey.png'}", bucket), torch.ones(1, 32, 32))


def test_the_latent_cache_keys_include_the_mask(tiny_models, tmp_path):
    from lorakit_sd.data.cache import build_latent_cache
    from lorakit_sd.data.dataset import Item, pixel_mask
    from lorakit_sd.data.images import file_hash
    from lorakit_sd.data.masks import to_latent

    data = write_tiny_images(tmp_path / "data", 1)
    mask = write_masks(tmp_path / "masks", 1) / "img_000.png"
    image = str(data / "img_000.png")

    def item():
        return Item(
            image=image,
            caption="x",
            folder=str(data),
            size=(32, 32),
            bucket=(32, 32),
            crop=(0, 0),
            resized=(32, 32),
            content_hash=file_hash(image),
            mask=str(mask),
            mask_hash=file_hash(mask),
        )

    vae = tiny_models["sd1"].load().vae
    cache = tmp_path / "cache"
    logs: list[str] = []
    first = build_latent_cache(
        [item()], vae, flip=False, batch_size=1, directory=cache, log=logs.append
    )
    entry = first.get(0)
    size = tuple(entry["moments"].shape[-2:])
    assert torch.equal(entry["mask"], to_latent(pixel_mask(item())[None], size)[0])
    again = build_latent_cache(
        [item()], vae, flip=False, batch_size=1, directory=cache, log=logs.append
    )
    assert again.hits == 1  # same image, same mask: found on disk
    Image.fromarray(255 - pattern(), "L").save(mask)  # a new mask for the same image
    changed = build_latent_cache(
        [item()], vae, flip=False, batch_size=1, directory=cache, log=logs.append
    )
    assert changed.hits == 0
    assert torch.allclose(changed.get(0)["mask"], 1 - entry["mask"], atol=1e-6)


def test_missing_or_misfit_masks_are_data_problems(sd_plugins, tiny_models, tmp_path):
    from lorakit_sd.data.dataset import build_items
    from lorakit_sd.testing import tiny_config

    from lorakit.api import ConfigError, DataError
    from lorakit.config import load_config

    data = write_tiny_images(tmp_path / "data", 2)
    masks = write_masks(tmp_path / "masks", 1)  # none for img_001
    cfg = tiny_config(
        tiny_models["sd1"], data, tmp_path / "run", sd={"conditioning_data_dir": str(masks)}
    )
    config = load_config(data=cfg, registries=sd_plugins.registries)
    with pytest.raises(DataError, match="img_001.png: no mask with its name in"):
        build_items(config, sd_plugins.registries, None, SIZE, log=lambda m: None)
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(masks / "img_001.png")
    with pytest.raises(DataError, match=r"the mask is \(16, 16\), its image \(32, 32\)"):
        build_items(config, sd_plugins.registries, None, SIZE, log=lambda m: None)
    with pytest.raises(ConfigError, match="two mask sources"):
        load_config(
            data={**cfg, "sd": {**cfg["sd"], "alpha_mask": True}}, registries=sd_plugins.registries
        )
