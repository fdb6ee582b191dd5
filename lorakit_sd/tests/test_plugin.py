"""Registration, the sd: config section and the templates (no model is loaded here)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest
import yaml
from lorakit_sd.families import builtin_templates

from lorakit.errors import ConfigError


def test_plugin_imports_nothing_heavy():
    code = (
        "import sys, lorakit_sd.plugin as p\n"
        "from lorakit.plugins import build_plugins\n"
        "r = build_plugins(entry_points=False, extra=[('sd', p)]).registries\n"
        "assert 'sd' in r.backends and 'kohya' in r.exporters and 'metadata_csv' in r.dataset_readers\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_registrations(sd_plugins):
    registries = sd_plugins.registries
    spec = registries.backends.get("sd")
    assert spec.task_types == ("image-generation",)
    from lorakit.backend_plugin import VERBS

    assert {v for v in VERBS if spec.supports(v)} == {
        "create",
        "plan",
        "inspect_data",
        "export",
        "merge",
        "sample",
        "demo",
        "selftest",
    }
    from lorakit_sd.families import builtin_templates

    # every family folder's template, and no other
    assert set(spec.templates) == set(builtin_templates())
    assert {
        "sd15",
        "sdxl",
        "flux1",
        "sd35",
        "flux2",
        "kontext",
        "qwen-image",
        "z-image",
        "wan21-t2v",
    } <= set(spec.templates)
    assert registries.backend_for("image-generation", None).spec is spec
    for name in ("kohya", "diffusers"):
        assert registries.exporters.get(name).backends == ("sd",)
    readers = {e.spec.name for e in registries.dataset_readers}
    assert {"metadata_csv", "metadata_jsonl", "caption_files"} <= readers


@pytest.mark.parametrize("template", sorted(builtin_templates()))
def test_templates_are_valid_configs(sd_plugins, template):

    from lorakit.config import load_config

    package, path = builtin_templates()[template]  # in its family's folder
    text = resources.files(package).joinpath(path).read_text()
    data = yaml.safe_load(text)
    config = load_config(data=data, registries=sd_plugins.registries, check_paths=False)
    assert config.backend == "sd"
    assert config.train.gradient_checkpointing and config.train.mixed_precision == "bf16"
    resolution = config.section.resolution
    assert config.section.cache_latents and 256 <= resolution <= 1024 and resolution % 16 == 0
    assert "#" in text  # commented


def _config(sd_plugins, tmp_path, sd):
    from lorakit.config import load_config

    data = {
        "task_type": "image-generation",
        "base_model": str(tmp_path),
        "train_data_dir": str(tmp_path),
        "sd": sd,
    }
    return load_config(data=data, registries=sd_plugins.registries)


def test_section_defaults_and_values(sd_plugins, tmp_path):
    config = _config(sd_plugins, tmp_path, {"resolution": 768, "noise_offset": 0.05})
    section = config.section
    assert section.resolution == 768 and section.bucket and section.noise_offset == 0.05
    assert section.text_cache_enabled() and section.latent_cache_enabled()
    assert not section.model_copy(update={"shuffle_tags": True}).text_cache_enabled()


@pytest.mark.parametrize(
    ("sd", "words"),
    [
        ({"resolutoin": 512}, ["sd.resolutoin", "did you mean 'resolution'"]),
        ({"caption_dropout": 2}, ["sd.caption_dropout"]),
        ({"shuffle_tags": True, "cache_text_encoder_outputs": True}, ["shuffle_tags"]),
        ({"train_text_encoder": True, "cache_text_encoder_outputs": True}, ["train_text_encoder"]),
        ({"keep_tokens": 2}, ["keep_tokens"]),
        ({"keep_tokens_separator": "|||"}, ["keep_tokens_separator", "shuffle_tags"]),
        ({"shuffle_tags": True, "keep_tokens_separator": " , "}, ["keep_tokens_separator"]),
    ],
)
def test_section_errors_name_the_key(sd_plugins, tmp_path, sd, words):
    with pytest.raises(ConfigError) as info:
        _config(sd_plugins, tmp_path, sd)
    for word in words:
        assert word in str(info.value)


def test_detect_reads_only_the_header(tmp_path):
    import torch
    from lorakit_sd.plugin import SDBackend
    from safetensors.torch import save_file

    detect = SDBackend().detect

    kohya = tmp_path / "a.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, str(kohya))
    other = tmp_path / "b.safetensors"
    save_file({"model.layers.0.weight": torch.zeros(1)}, str(other))
    junk = tmp_path / "c.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    assert detect(kohya)
    assert not detect(other) and not detect(junk) and not detect(tmp_path / "missing.safetensors")


def test_every_section_key_is_documented():
    from pathlib import Path

    from lorakit_sd.config import SDSection, Subset

    doc = Path(__file__).resolve().parents[2] / "docs" / "sd.md"
    if not doc.is_file():
        pytest.skip("docs/ is not next to this checkout")
    text = doc.read_text(encoding="utf-8")
    for name in [*SDSection.model_fields, *Subset.model_fields]:
        assert f"`{name}`" in text, name
