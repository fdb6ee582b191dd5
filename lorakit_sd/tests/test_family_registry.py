"""Image families are registered through lorakit-sd's ``register_image_families`` hook."""

from __future__ import annotations

import pytest

from lorakit.api import hookimpl, lazy
from lorakit.config import load_config
from lorakit.errors import ConfigError, PluginError


class Extra:
    """A third party's family package, registered in-process after lorakit-sd."""

    LORAKIT_PLUGIN_API = 1

    def __init__(self, name: str = "tiny-extra") -> None:
        self.name = name

    @hookimpl
    def register_image_families(self, register):
        from lorakit_sd.api import FamilySpec

        register(FamilySpec(self.name, "Tiny Extra", lazy("lorakit_sd.families.sd1.family:SD1")))


def _plugins(*extra):
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin), *extra])
    set_plugins(plugins)
    return plugins


@pytest.fixture(autouse=True)
def _restore():
    from lorakit.plugins import set_plugins

    yield
    set_plugins(None)


def test_lorakit_sd_registers_its_own_families_through_the_hook():
    from lorakit_sd import families

    plugins = _plugins()
    made = plugins.registrations("register_image_families")
    names = [spec.name for info, spec in made if info.name == "sd"]
    first = ["sd1", "sdxl", "sd3", "flux2_klein", "flux2", "kontext", "flux1"]
    assert [n for n in names if n in first] == first and "qwen_image" in names and "wan" in names
    assert families.labels()["flux1"] == "FLUX.1"
    assert families.get("sdxl").default_resolution == 1024


def test_a_third_party_family_is_a_valid_model_family(tmp_path):
    from lorakit_sd import families

    _plugins(("extra", Extra()))
    assert "tiny-extra" in families.names()
    assert families.get("tiny-extra").label == "SD1.x"  # the class it was given
    data = {
        "base_model": str(tmp_path),
        "train_data_dir": str(tmp_path),
        "output_dir": str(tmp_path),
        "sd": {"model_family": "tiny-extra"},
    }
    assert load_config(data=data, check_paths=False).section.model_family == "tiny-extra"
    _plugins()  # uninstalled: the name is refused, naming what is installed
    with pytest.raises(
        ConfigError,
        match=r"sd.model_family.*choose auto, sd1, sdxl, sd3, flux2_klein, flux2, kontext, flux1",
    ):
        load_config(data=data, check_paths=False)


def test_two_packages_registering_one_family_name_both_named():
    from lorakit_sd import families

    _plugins(("extra", Extra("sdxl")))
    with pytest.raises(
        PluginError, match="'sdxl' is registered by both (sd and extra|extra and sd)"
    ):
        families.names()
