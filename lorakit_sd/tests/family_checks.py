"""Checks the Qwen-Image and Z-Image tests share: inspect, plan, the template, sampling."""

from __future__ import annotations

import torch


def injected(module):
    """How many LoRA modules PEFT placed in ``module``."""
    return sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A"))


def inspect_files(*paths):
    """``lorakit inspect``'s reading of each file, with the sd plugin installed."""
    import lorakit_sd.plugin

    from lorakit.diagnostics.inspect import inspect_path
    from lorakit.plugins import build_plugins, set_plugins

    set_plugins(build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)]))
    try:
        return [inspect_path(p) for p in paths]
    finally:
        set_plugins(None)


def plan_of(model, data, tmp, **sd):
    """``lorakit plan``'s estimate of a run on ``model`` (gradient checkpointing on)."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config
    from lorakit.planning import make_plan
    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    try:
        cfg = tiny_config(model, data, tmp / "p", sd=sd, gradient_checkpointing=True)
        return make_plan(load_config(data=cfg, registries=plugins.registries), ladder=False)
    finally:
        set_plugins(None)


def check_template(tmp, name, model, capsys, still):
    """``config init --template name``, only paths, size and steps replaced, trains (bf16
    autocast, diffusers' gradient checkpointing) and both files load in the pipeline with the
    trained deltas; ``still``: the modules that get no gradient."""
    import yaml
    from accelerate.state import AcceleratorState
    from sd_helpers import first_losses
    from test_templates_sd import STEPS, _deltas, _train_template

    # bf16 sets accelerate's process-wide state, which an earlier run's "no" holds
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        template, cap, dtypes = _train_template(tmp, name, model, capsys)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert template["mixed_precision"] == "bf16" and template["gradient_checkpointing"] is True
    assert torch.bfloat16 in dtypes and cap.unet.is_gradient_checkpointing
    ran = yaml.safe_load((tmp / "out" / "config.yaml").read_text())
    assert ran["lora_rank"] == template["lora_rank"] == 16
    assert len(first_losses(tmp / "out")) == STEPS
    want = _deltas(cap.unet)
    assert [k for k, d in want.items() if d.abs().max() == 0] == still
    for file in ("out.safetensors", "out.diffusers.safetensors"):
        pipe = model.load()
        pipe.load_lora_weights(str(tmp / "out" / file))
        got = _deltas(pipe.transformer)
        assert set(got) == set(want), file
        for key, delta in want.items():
            assert (got[key] - delta).abs().max() <= 1e-5 * max(delta.abs().max(), 1e-12), key


def rendered(path):
    """The first image ``lorakit sample`` wrote, as an int array."""
    import numpy as np
    from PIL import Image

    with Image.open(next(p for p in path if "sheet" not in p.name)) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


def shared_run(model, tmp, steps):
    """The run a family's tests share: four images, rank 4 with alpha 8 (a file that loses
    alpha loads at the wrong strength), a preview at the end; (data, result, capture)."""
    from flow_helpers import train
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
        sd={"max_sequence_length": 32},
    )
    cap.unet.eval()
    return data, result, cap


def check_export_both_ways(model, run, tmp, output, x):
    """The ComfyUI-layout file exported to diffusers' layout (``--base`` the model) loads in
    the pipeline as the trained transformer (``output(pipe, transformer, x, σ)``), and back
    gives the very tensors."""
    from lorakit_sd.commands.export import export
    from safetensors.torch import load_file

    _, result, cap = run
    comfy = result.output_dir / "run.safetensors"
    base = str(model.diffusers_dir)
    diffusers = export(comfy, "diffusers", tmp / "a.diffusers.safetensors", base)[0]
    pipe = model.load()
    pipe.load_lora_weights(str(diffusers))
    assert injected(pipe.transformer) == injected(cap.unet)
    want = output(pipe, cap.unet, x, 0.6)
    assert (output(pipe, pipe.transformer, x, 0.6) - want).abs().max() < 1e-5
    again = export(diffusers, "kohya", tmp / "a.safetensors", base)[0]
    a, b = load_file(str(comfy)), load_file(str(again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_lora_changes_the_image(model, result, steps):
    """The run's preview sheet exists, and the pipeline's image changes with the LoRA."""
    import numpy as np

    assert (result.output_dir / "samples" / f"step-{steps:06d}.png").is_file()
    pipe = model.load()

    def render():
        generator = torch.Generator().manual_seed(0)
        image = pipe("a red cat", num_inference_steps=2, height=32, width=32, generator=generator)
        return np.asarray(image.images[0], dtype=int)

    before = render()
    pipe.load_lora_weights(str(result.output_dir / "run.diffusers.safetensors"))
    assert np.abs(render() - before).max() > 0


def load_split(path):
    """``load_base`` of a transformer file with ComfyUI's ``models/`` layout around it."""
    import lorakit_sd.plugin
    from lorakit_sd.models import load_base

    from lorakit.plugins import build_plugins, set_plugins

    set_plugins(build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)]))
    try:
        return load_base(str(path), base_config=str(path.parents[1] / "configs"))
    finally:
        set_plugins(None)


def check_parts_from_files(path, pipe, family, transformer_state):
    """Every part of the loaded base is the file's: the VAE and text encoder exactly, the
    transformer as ``transformer_state`` (diffusers' names) read back in float32 from the
    bf16 or ComfyUI scaled-fp8 file (``w8 * scale_weight``)."""
    from safetensors.torch import load_file

    model = load_split(path)
    assert model.family == family
    for part in ("vae", "text_encoder"):
        got, want = getattr(model.pipe, part).state_dict(), getattr(pipe, part).state_dict()
        assert got.keys() >= want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    stored = load_file(str(path))
    fp8 = {
        k: stored[k].float() * stored[k.removesuffix(".weight") + ".scale_weight"]
        for k in stored
        if stored[k].dtype == torch.float8_e4m3fn and k != "scaled_fp8"
    }
    assert ("scaled_fp8" in stored) == bool(fp8)
    kept = {k: v for k, v in stored.items() if k != "scaled_fp8" and "scale_weight" not in k}
    expected = transformer_state({k: fp8.get(k, v.float()) for k, v in kept.items()})
    got = model.pipe.transformer.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    return model


def check_missing_part(transformer_file, tmp, part, words):
    """Without ``part``'s folder (and no weights in the configs folder) loading stops with
    one line naming the part."""
    import shutil

    import pytest

    from lorakit.api import UsageError

    root = tmp / "models"
    shutil.copytree(transformer_file.parents[1], root)
    shutil.rmtree(root / part)
    with pytest.raises(UsageError, match=f"no {words}.* holds no") as err:
        load_split(root / "diffusion_models" / transformer_file.name)
    assert "\n" not in str(err.value)


def split_models(root, build_folder, build_pipeline, write_split_files):
    """A seed-0 config folder, a seed-1 pipeline and its split files (bf16 and fp8)."""
    from lorakit.testing import one_thread

    with one_thread():
        model = build_folder(root / "config")
        pipe = build_pipeline(seed=1)
        bf16 = write_split_files(pipe, root / "bf16", model.diffusers_dir)
        fp8 = write_split_files(pipe, root / "fp8", model.diffusers_dir, fp8=True)
    return model, pipe, {"bf16": bf16, "fp8": fp8}


def check_cached_length(family_name, pipe, captions):
    """The text cache keeps as many rows as the longest caption's embedding has (no row
    cut, none wasted), at most ``sd.max_sequence_length``, saying which captions it cuts."""
    from types import SimpleNamespace

    from lorakit_sd.config import SDSection

    from lorakit_sd import families

    family = families.get(family_name)
    items = [SimpleNamespace(caption=c, where=f"{i}.png", image="") for i, c in enumerate(captions)]
    said: list[str] = []
    n = family.max_tokens(items, pipe, SDSection(), said.append)
    _, mask = family.encode(pipe, captions, n)
    assert int(mask.sum(dim=1).max()) == n and not said  # the longest fills it exactly
    assert (
        family.max_tokens(items, pipe, SDSection(max_sequence_length=n - 1), said.append) == n - 1
    )
    assert (
        said and "1 caption(s) are longer than" in said[0] and f"{len(captions) - 1}.png" in said[0]
    )


def check_refused(model, tmp, sd, words):
    """A run with these ``sd`` keys stops with one ConfigError line naming the first key."""
    import pytest
    from flow_helpers import train
    from lorakit_sd.testing import write_tiny_images

    from lorakit.api import ConfigError

    data = write_tiny_images(tmp / "data", 1)
    with pytest.raises(ConfigError, match=words) as err:
        train(tmp, model, data, max_steps=1, sd=sd)
    assert "\n" not in str(err.value) and err.value.key == f"sd.{next(iter(sd))}"
    assert not (tmp / "run").exists()


def check_export_without_base(family_name, pipeline_class, paths, tmp):
    """A LoRA on the released model's shapes (no ``--base``: the family's standard structure,
    built on the meta device) exported to the ComfyUI layout is read back by diffusers' own
    converter (``pipeline_class.lora_state_dict``) to the same updates, alpha ≠ rank kept."""
    from lorakit_sd.commands.export import export, standard_structure
    from lorakit_sd.lorafiles.names import LoraModule, to_diffusers

    from lorakit.api import save_safetensors

    transformer, _ = standard_structure(family_name)
    g = torch.Generator().manual_seed(0)
    modules = []
    for i, path in enumerate(paths):
        out_f, in_f = transformer.get_submodule(path).weight.shape
        down, up = torch.randn(2, in_f, generator=g), torch.randn(out_f, 2, generator=g)
        modules.append(LoraModule("transformer", path, down * 0.1, up * 0.1, 1.0 + i))
    tensors, meta = to_diffusers(modules, torch.float32)
    source = tmp / "full.diffusers.safetensors"
    save_safetensors(tensors, source, metadata=meta)
    comfy = export(source, "kohya", tmp / "full.safetensors")[0]
    read = pipeline_class.lora_state_dict(str(comfy))
    read = read[0] if isinstance(read, tuple) else read
    got = {
        k.removeprefix("transformer.").removesuffix(".lora_A.weight"): (
            read[k.replace("lora_A", "lora_B")].float() @ v.float()
        )
        for k, v in read.items()
        if k.endswith(".lora_A.weight")
    }
    assert set(got) == set(paths)
    for m in modules:  # diffusers folds alpha / rank into the tensors it returns
        assert torch.allclose(got[m.path], m.delta(), atol=1e-6), m.path
