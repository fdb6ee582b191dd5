"""Loading base models: single file, diffusers folder, hub id; family detection; pickles."""

from __future__ import annotations

import pytest
import torch
from lorakit_sd.models import load_base, peek_family

from lorakit.errors import UsageError


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("form", ["single_file", "diffusers"])
def test_load_detects_family_and_keeps_every_weight(tiny_models, family, form):
    model = tiny_models[family]
    if form == "single_file":
        loaded = load_base(str(model.single_file), base_config=str(model.config_dir))
    else:
        loaded = load_base(str(model.diffusers_dir))
    assert loaded.family == family and loaded.source == form
    assert peek_family(loaded.path) == family
    assert len(loaded.text_encoders) == (2 if family == "sdxl" else 1)
    reference = model.load()
    for name in ("unet", "vae"):
        want, got = getattr(reference, name).state_dict(), getattr(loaded.pipe, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert not any(p.requires_grad for p in loaded.pipe.unet.parameters())
    processors = {type(p).__name__ for p in loaded.pipe.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}  # torch SDPA


def test_pickled_checkpoints_need_the_opt_in(tiny_models, tmp_path):
    from safetensors.torch import load_file

    model = tiny_models["sd1"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(model.single_file))}, ckpt)
    with pytest.raises(UsageError, match="pickled checkpoint.*--allow-unsafe-pickle"):
        load_base(str(ckpt), base_config=str(model.config_dir))
    loaded = load_base(str(ckpt), base_config=str(model.config_dir), allow_unsafe_pickle=True)
    assert loaded.family == "sd1"


def test_family_mismatch_and_unknown_files(tiny_models, tmp_path):
    from safetensors.torch import save_file

    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError, match="sd.model_family"):
        peek_family(str(tiny_models["sdxl"].single_file), "sd1")
    other = tmp_path / "other.safetensors"
    save_file({"model.layers.0.weight": torch.zeros(2)}, str(other))
    with pytest.raises(
        UsageError, match="not an SD1.x, SDXL, SD3 / SD3.5(,| or) .*FLUX.1.* checkpoint"
    ):
        load_base(str(other))
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.positional_embedding": torch.zeros(2)}, str(sd2))
    with pytest.raises(UsageError, match="SD 2.x"):
        load_base(str(sd2))
    with pytest.raises(UsageError, match="no model_index.json"):
        load_base(str(tmp_path))


def test_offline_single_file_without_configs_says_what_to_do(tiny_models, monkeypatch, tmp_path):
    from lorakit_sd import families

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        families.get("sd1"), "default_config_repo", "lorakit-tests/never-cached-sd1"
    )
    with pytest.raises(UsageError, match="sd.base_config"):
        load_base(str(tiny_models["sd1"].single_file))
    with pytest.raises(UsageError, match="not found in the local hub cache"):
        load_base("someone/not-cached-model")


def test_training_and_commands_load_bases_through_the_model_loader_hook(tiny_models, tmp_path):
    """A plugin's loader (higher priority) reads a format lorakit-sd does not know."""
    from types import SimpleNamespace

    import lorakit_sd.plugin
    from lorakit_sd.commands.sample import sample
    from lorakit_sd.config import SDSection
    from lorakit_sd.models import load_folder
    from lorakit_sd.testing import tiny_config, write_tiny_images

    from lorakit.api import ModelLoaderSpec, hookimpl
    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import build_plugins, set_plugins

    calls: list[str] = []
    model = tiny_models["sd1"]

    def load(source, **options):
        calls.append(source)
        return load_folder(str(model.diffusers_dir), **options)

    class Pointer:
        @hookimpl
        def register_model_loaders(self, register):
            register(
                ModelLoaderSpec(
                    "pointer", "sd", lambda s: s.endswith(".pointer"), load, priority=99
                )
            )

    base = tmp_path / "mascot-base.pointer"
    base.write_text(str(model.diffusers_dir))
    data = write_tiny_images(tmp_path / "data", 2)
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin), ("p", Pointer())])
    set_plugins(plugins)
    try:
        raw = tiny_config(model, data, tmp_path / "out", max_steps=1, base_model=str(base))
        train(load_config(data=raw, registries=plugins.registries), plugins=plugins, progress=False)
        assert calls == [str(base)]
        small = SimpleNamespace(section=SDSection(resolution=32, bucket_step=8))
        sample(str(base), [], ["a red cat"], tmp_path / "samples", steps=1, config=small)
        assert calls == [str(base)] * 2
        # the folder itself goes to lorakit-sd's own loader, or to the one named in the config
        assert plugins.registries.model_loader_for("sd", str(model.diffusers_dir)).name == (
            "sd-diffusers"
        )
        with pytest.raises(UsageError, match="model loader 'nope'"):
            load_base(str(model.diffusers_dir), loader="nope", registries=plugins.registries)
    finally:
        set_plugins(None)
    assert (tmp_path / "out" / "out.safetensors").is_file()


def test_sd1_files_without_the_text_model_level_load(tiny_models, tmp_path):
    """NAI-derived SD1 merges store cond_stage_model.transformer.embeddings... (no text_model.)."""
    from safetensors.torch import load_file, save_file

    model = tiny_models["sd1"]
    prefix = "cond_stage_model.transformer."
    bare = {
        k.replace(prefix + "text_model.", prefix): v
        for k, v in load_file(str(model.single_file)).items()
    }
    assert not any(k.startswith(prefix + "text_model.") for k in bare)
    path = tmp_path / "nai-merge.safetensors"
    save_file(bare, str(path))
    assert peek_family(str(path)) == "sd1"
    loaded = load_base(str(path), base_config=str(model.config_dir))
    reference = model.load()
    for name in ("text_encoder", "unet"):
        want, got = getattr(reference, name).state_dict(), getattr(loaded.pipe, name).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    # merge finds the text-encoder weights of such a file under their kohya names
    from lorakit_sd.commands.merge import merge_checkpoint

    stem = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    g = torch.Generator().manual_seed(0)
    lora = {
        f"{stem}.lora_down.weight": torch.randn(2, 32, generator=g),
        f"{stem}.lora_up.weight": torch.randn(32, 2, generator=g),
        f"{stem}.alpha": torch.tensor(2.0),
    }
    lora_path = tmp_path / "te.safetensors"
    save_file(lora, str(lora_path), metadata={"ss_base_model_version": "sd_v1"})
    out = merge_checkpoint(
        str(path), [(str(lora_path), 1.0)], tmp_path / "m.safetensors", "float32"
    )
    key = prefix + "encoder.layers.0.self_attn.q_proj.weight"
    merged = load_file(str(out))[key]
    delta = lora[f"{stem}.lora_up.weight"] @ lora[f"{stem}.lora_down.weight"]
    torch.testing.assert_close(merged, bare[key] + delta)
