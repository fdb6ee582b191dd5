"""The plugin manager: in-process plugins, broken ones, duplicates, API versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import toy_config

import lorakit
from lorakit.config import load_config
from lorakit.engine import train
from lorakit.errors import PluginError, RunError
from lorakit.plugins import build_plugins
from lorakit.registry import OptimizerSpec, TrackerSpec

LORAKIT = [sys.executable, "-m", "lorakit.cli"]


class ListTracker:
    rows: list = []

    def __init__(self, output_dir, config, start_step):
        pass

    def log(self, metrics, step):
        ListTracker.rows.append((step, metrics["loss"]))

    def close(self):
        pass


class ThirdParty:
    """A third party's plugin, registered in-process: a tracker and an optimizer."""

    LORAKIT_PLUGIN_API = 1

    @lorakit.hookimpl
    def register_trackers(self, register):
        register(TrackerSpec("memory", ListTracker, "keeps metrics in a list"))

    @lorakit.hookimpl
    def register_optimizers(self, register):
        def sgd(params, lr, **args):
            import torch

            return torch.optim.SGD(params, lr=lr, **args)

        register(OptimizerSpec("sgd", sgd, "plain SGD"))


def test_third_party_plugin_is_used_by_a_run(toy_plugins, tmp_path):
    toy_plugins.add(ThirdParty(), name="thirdparty", distribution="lorakit-thirdparty")
    entry = toy_plugins.registries.trackers.entry("memory")
    assert entry.distribution == "lorakit-thirdparty"
    ListTracker.rows = []
    cfg = load_config(data=toy_config(tmp_path, trackers=["memory"], optimizer="sgd", max_steps=3))
    train(cfg, plugins=toy_plugins, progress=False)
    assert [s for s, _ in ListTracker.rows] == [1, 2, 3]


def test_third_party_overrides_a_builtin(toy_plugins):
    class Override:
        @lorakit.hookimpl
        def register_trackers(self, register):
            register(TrackerSpec("jsonl", ListTracker, "mine"))

    toy_plugins.add(Override(), name="override", distribution="lorakit-override")
    assert toy_plugins.registries.trackers.entry("jsonl").distribution == "lorakit-override"


def test_duplicate_names_name_both_distributions(toy_plugins):
    toy_plugins.add(ThirdParty(), name="one", distribution="lorakit-one")
    toy_plugins.add(ThirdParty(), name="two", distribution="lorakit-two")
    with pytest.raises(PluginError) as info:
        toy_plugins.check()
    assert "lorakit-one" in str(info.value) and "lorakit-two" in str(info.value)


def test_incompatible_api_is_skipped_with_a_message():
    class Old:
        LORAKIT_PLUGIN_API = 0

        @lorakit.hookimpl
        def register_optimizers(self, register):
            register(OptimizerSpec("old", lambda *a, **k: None))

    plugins = build_plugins(entry_points=False)
    info = plugins.add(Old(), name="old", distribution="lorakit-old")
    assert info.status == "incompatible" and "supports API 1" in info.error
    assert "old" not in plugins.registries.optimizers


def test_registration_error_names_the_plugin(monkeypatch):
    class Broken:
        @lorakit.hookimpl
        def register_optimizers(self, register):
            raise RuntimeError("boom")

    plugins = build_plugins(entry_points=False)
    info = plugins.add(Broken(), name="broken", distribution="lorakit-broken")
    assert "adamw" in plugins.registries.optimizers  # the others still load
    assert info.status == "error" and "boom" in info.error
    monkeypatch.setenv("LORAKIT_STRICT_PLUGINS", "1")
    plugins = build_plugins(entry_points=False)
    plugins.add(Broken(), name="broken", distribution="lorakit-broken")
    with pytest.raises(PluginError, match="plugin broken"):
        _ = plugins.registries


def test_lifecycle_hook_error_names_the_plugin(toy_plugins, tmp_path):
    class Faulty:
        @lorakit.hookimpl
        def on_train_start(self, run):
            raise ValueError("bad observer")

    toy_plugins.add(Faulty(), name="faulty", distribution="lorakit-faulty")
    cfg = load_config(data=toy_config(tmp_path, max_steps=2))
    with pytest.raises(RunError, match="plugin faulty failed in on_train_start"):
        train(cfg, plugins=toy_plugins, progress=False)


@pytest.fixture
def broken_dist(tmp_path):
    """A real installed distribution whose entry point raises on import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lorakit_broken.py").write_text("raise ImportError('missing dependency xyz')\n")
    info = site / "lorakit_broken-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lorakit-broken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[lorakit]\nbroken = lorakit_broken\n")
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return env


def test_broken_entry_point_never_breaks_help_or_plugins(broken_dist):
    help_ = subprocess.run([*LORAKIT, "--help"], env=broken_dist, capture_output=True, text=True)
    assert help_.returncode == 0 and "train" in help_.stdout
    listed = subprocess.run(
        [*LORAKIT, "plugins", "--json"], env=broken_dist, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    broken = [p for p in json.loads(listed.stdout) if p["name"] == "broken"][0]
    assert broken["status"] == "error" and "missing dependency xyz" in broken["error"]
    assert broken["distribution"] == "lorakit-broken"
    strict = subprocess.run(
        [*LORAKIT, "plugins"],
        env={**broken_dist, "LORAKIT_STRICT_PLUGINS": "1"},
        capture_output=True,
        text=True,
    )
    assert strict.returncode == 2 and "lorakit-broken" in strict.stderr
    assert "Traceback" not in strict.stderr
    version = subprocess.run(
        [*LORAKIT, "version", "--json"], env=broken_dist, capture_output=True, text=True
    )
    assert version.returncode == 0, version.stderr
    listed = {p["distribution"]: p for p in json.loads(version.stdout)["plugins"]}
    assert listed["lorakit-broken"]["status"] == "error"
    doctor = subprocess.run([*LORAKIT, "doctor"], env=broken_dist, capture_output=True, text=True)
    assert doctor.returncode in (0, 1) and "Traceback" not in doctor.stderr + doctor.stdout
    assert "lorakit-broken" in doctor.stdout and "missing dependency xyz" in doctor.stdout


def test_disabled_plugins(broken_dist):
    env = {**broken_dist, "LORAKIT_DISABLE_PLUGINS": "broken,lorakit-llm"}
    listed = subprocess.run(
        [*LORAKIT, "plugins", "--json"], env=env, capture_output=True, text=True
    )
    status = {p["name"]: p["status"] for p in json.loads(listed.stdout)}
    assert status["broken"] == "disabled"
    assert status.get("llm") == "disabled"


def test_installed_plugins_are_listed_with_their_distributions():
    listed = subprocess.run([*LORAKIT, "plugins", "--json"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    by_dist = {p["distribution"]: p for p in json.loads(listed.stdout)}
    for dist in ("lorakit-sd", "lorakit-llm", "lorakit-labelers"):
        assert by_dist[dist]["status"] == "ok", by_dist[dist]
        assert by_dist[dist]["version"] == "0.1.0"
        assert by_dist[dist]["plugin_api"] == 2


def test_plugin_modules_are_light():
    """Every installed plugin entry point, and the public API with its hook types, imports
    without torch, diffusers, transformers, peft."""
    code = (
        "import sys, importlib.metadata as md\n"
        "from lorakit.api import Backend, Config, LossOutput, RunInfo, TrainContext\n"
        "for ep in md.entry_points(group='lorakit'): ep.load()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"plugins import heavy modules at import time: {out.stdout}"


def test_a_plugin_publishes_hooks_that_another_implements_in_any_load_order(tmp_path, monkeypatch):
    """``LORAKIT_HOOKSPECS``: a package's own hook, implemented by a third party whose entry
    point loads first, is a hook of the same manager; what each registers names its plugin."""
    import importlib.metadata as md

    (tmp_path / "pub_specs.py").write_text(
        "from lorakit.api import hookspec\n\n@hookspec\n"
        "def register_widgets(register):\n    'Register widgets.'\n"
    )
    (tmp_path / "pub_plugin.py").write_text(
        "from lorakit.api import hookimpl\nLORAKIT_PLUGIN_API = 1\n"
        "LORAKIT_HOOKSPECS = 'pub_specs'\n\n@hookimpl\n"
        "def register_widgets(register):\n    register('own')\n"
    )
    (tmp_path / "third_plugin.py").write_text(
        "from lorakit.api import hookimpl\nLORAKIT_PLUGIN_API = 1\n\n@hookimpl\n"
        "def register_widgets(register):\n    register('theirs')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = build_plugins(entry_points=False)
    plugins.load_entry_points(
        [
            md.EntryPoint("third", "third_plugin", "lorakit"),  # before the publisher
            md.EntryPoint("pub", "pub_plugin", "lorakit"),
        ]
    )
    assert plugins.infos["third"].status == "ok", plugins.infos["third"].error
    assert plugins.spec_modules == ["pub_specs"]
    made = sorted((info.name, spec) for info, spec in plugins.registrations("register_widgets"))
    assert made == [("pub", "own"), ("third", "theirs")]
    assert plugins.registrations("register_nothing") == []
    _ = plugins.registries  # what ``lorakit plugins`` shows
    assert plugins.infos["third"].registered == {"widget": ["theirs"]}
    without = build_plugins(entry_points=False)
    without.load_entry_points([md.EntryPoint("third", "third_plugin", "lorakit")])
    assert without.infos["third"].status == "error"  # nobody published the hook
    assert "unknown hook" in without.infos["third"].error
