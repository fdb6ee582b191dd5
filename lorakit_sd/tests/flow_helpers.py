"""What the FLUX.1 / SD3 tests share: a real training run on a tiny flow model, in-process."""

from __future__ import annotations

from typing import Any

import torch
from sd_helpers import Capture

import lorakit

SD = {"max_sequence_length": 16, "bucket_step": 16}


def train(tmp, model, data, resume=None, cap=None, **overrides):
    """Train ``model`` through the engine with the ``sd`` plugin; (result, capture).

    ``cap``: the capturing plugin (default a fresh :class:`sd_helpers.Capture`)."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config
    from sd_helpers import Capture

    from lorakit.config import load_config
    from lorakit.engine import train as run
    from lorakit.plugins import build_plugins, set_plugins

    cap = cap or Capture()
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin), ("c", cap)])
    set_plugins(plugins)
    try:
        output = overrides.pop("output_dir", tmp / "run")
        sd = {**SD, **overrides.pop("sd", {})}
        cfg = tiny_config(model, data, output, sd=sd, **overrides)
        config = load_config(data=cfg, registries=plugins.registries)
        result = run(config, plugins=plugins, progress=False, resume=resume)
    finally:
        set_plugins(None)
    return result, cap


def _conditioning(pipe, captions):
    with torch.no_grad():
        if type(pipe).__name__ == "FluxPipeline":
            hidden, pooled, _ = pipe.encode_prompt(captions, max_sequence_length=16)
        else:
            hidden, _, pooled, _ = pipe.encode_prompt(
                captions, None, None, do_classifier_free_guidance=False, max_sequence_length=16
            )
    return hidden, pooled


def transformer_output(pipe, transformer, latents, sigma, captions):
    """The transformer's prediction, called the way each diffusers pipeline calls it."""
    hidden, pooled = _conditioning(pipe, captions)
    b, c, h, w = latents.shape
    with torch.no_grad():
        if type(pipe).__name__ != "FluxPipeline":
            t = torch.full((b,), sigma * 1000.0)
            return transformer(
                hidden_states=latents,
                timestep=t,
                encoder_hidden_states=hidden,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        packed = pipe._pack_latents(latents, b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3)
        out = transformer(
            hidden_states=packed,
            timestep=torch.full((b,), sigma),
            guidance=torch.ones(b),
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return pipe._unpack_latents(out, h, w, 1)


def overfit(tmp, model, steps, **extra):
    """A short run that overfits four images with previews at its last step; (result, cap)."""
    from lorakit_sd.testing import write_tiny_images

    data = write_tiny_images(tmp / "data", 4)
    result, cap = train(
        tmp,
        model,
        data,
        max_steps=steps,
        batch_size=4,
        learning_rate=1e-2,
        lora_alpha=8,
        sample_prompts=["a red cat"],
        sample_every_n_steps=steps,
        **extra,
    )
    return data, result, cap


def assert_resumes_exactly(tmp, model, **sd):
    """A run stopped at its step-2 checkpoint and resumed ends with the very LoRA (and the
    same last losses) as the run that did not stop (two bucket sizes, caption dropout and
    flips drawn each step; ``sd``: more sd.* keys)."""
    from lorakit_sd.testing import write_tiny_images
    from sd_helpers import resumed_equals_whole

    data = write_tiny_images(tmp / "data", 4, sizes=[(32, 32), (48, 32)])
    common = {
        "max_steps": 4,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "save_steps": 2,
        "export_formats": ["diffusers"],
        "sd": {"caption_dropout": 0.3, "flip_aug": True, **sd},
    }
    resumed_equals_whole(train, tmp, model, data, common)


def assert_resumed_run_matches(tmp, model, data, whole, step, **common):
    """A run of ``data`` resumed from ``whole``'s ``step-<step>`` checkpoint (``common``: the
    settings ``whole`` ran with) ends with the very LoRA and the same last losses."""
    from safetensors.torch import load_file
    from sd_helpers import first_losses

    resumed, _ = train(
        tmp, model, data, resume=str(whole.output_dir / "checkpoints" / f"step-{step}"), **common
    )
    a = load_file(str(next(whole.output_dir.glob("*.diffusers.safetensors"))))
    b = load_file(str(next(resumed.output_dir.glob("*.diffusers.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first_losses(whole.output_dir)[step:] == first_losses(resumed.output_dir)[-step:]


class TransformerInputs(Capture):
    """A :class:`sd_helpers.Capture` that also records the keyword arguments of every training
    call of the transformer (tensors copied; previews, in eval mode, left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    @lorakit.hookimpl
    def on_train_start(self, run: Any) -> None:
        def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if module.training:
                self.calls.append(
                    {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
                )

        run.backend.unet.register_forward_pre_hook(record, with_kwargs=True)


def injected(module):
    """How many LoRA modules ``module`` holds (diffusers drops keys it cannot place without a
    word: a loaded file must bring every one)."""
    return sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A"))
