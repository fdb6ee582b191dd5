"""The plugin API as a plugin author meets it: loaders, pluggy semantics, overrides,
validation against the registries, the seed's words, files people share. The import
boundaries (one public API, no cycles, exporters on the typed view) are in
``test_api_boundaries.py``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from conftest import toy_config

from lorakit.api import ModelLoaderSpec, OptimizerSpec, TrackerSpec, hookimpl
from lorakit.config import load_config
from lorakit.errors import ConfigError, PluginError
from lorakit.testing import run_cli, write_config

ROOT = Path(__file__).resolve().parent.parent


# -- 1. model loaders are a hook -------------------------------------------------------------


class JsonLoader:
    """A third party's loader for a layout the toy backend does not know: weights in JSON."""

    LORAKIT_PLUGIN_API = 1
    loaded: list[str] = []

    @staticmethod
    def detect(source: str) -> bool:
        return source.endswith(".mlp.json")

    @staticmethod
    def load(source: str, *, dim: int, hidden: int):
        import torch

        JsonLoader.loaded.append(source)
        weights = json.loads(Path(source).read_text())
        base = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)
        )
        with torch.no_grad():
            for p in base.parameters():
                p.fill_(weights["fill"])
        return base

    @hookimpl
    def register_model_loaders(self, register):
        register(ModelLoaderSpec("mlp-json", "toy", self.detect, self.load, "MLP weights as JSON"))


def test_a_third_party_loader_is_used_by_a_run(toy_plugins, tmp_path, capsys):
    from lorakit.engine import train

    toy_plugins.add(JsonLoader(), name="jsonloader", distribution="lorakit-jsonloader")
    base = tmp_path / "base.mlp.json"
    base.write_text(json.dumps({"fill": 0.05}))
    JsonLoader.loaded = []
    cfg = load_config(data=toy_config(tmp_path, base_model=str(base), max_steps=2))
    result = train(cfg, plugins=toy_plugins, progress=False)
    assert JsonLoader.loaded == [str(base)] and result.steps == 2
    capsys.readouterr()
    # the built-in loader still serves what it recognises, and `model_loader:` picks by name
    assert toy_plugins.registries.model_loader_for("toy", "toy/mlp").name == "toy-random"
    code, out, _ = run_cli(capsys, "plugins", "--json")
    listed = {p["name"]: p["registered"] for p in json.loads(out)}
    assert listed["jsonloader"] == {"model loader": ["mlp-json"]}
    assert listed["toy"]["model loader"] == ["toy-random"]


def test_an_unreadable_base_names_the_installed_loaders(toy_plugins, tmp_path):
    from lorakit.engine import train
    from lorakit.errors import UsageError

    weird = tmp_path / "model.weird"
    weird.write_text("?")
    cfg = load_config(data=toy_config(tmp_path, base_model=str(weird), max_steps=1))
    with pytest.raises(UsageError, match=r"no toy model loader reads .*model.weird.*toy-random"):
        train(cfg, plugins=toy_plugins, progress=False)


def test_model_loader_key_is_checked_against_the_registry(toy_plugins, tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown model loader 'toy-randon'.*did you mean 'toy-random'"
    ):
        load_config(data=toy_config(tmp_path, model_loader="toy-randon"))


# -- 2. pluggy as designed ---------------------------------------------------------------------


def test_wrappers_and_ordering_behave_as_pluggy_documents(toy_plugins, tmp_path):
    from lorakit.engine import train

    calls: list[str] = []

    class Observer:
        @hookimpl(trylast=True)
        def on_step_end(self, run, step, metrics):
            calls.append(f"last:{step}")

        @hookimpl(tryfirst=True)
        def on_train_start(self, run):
            calls.append("first")

    class Wrapper:
        @hookimpl(wrapper=True)
        def on_step_end(self, run, step, metrics):
            calls.append(f"before:{step}")
            result = yield
            calls.append(f"after:{step}")
            return result

    toy_plugins.add(Observer(), name="observer", distribution="observer")
    toy_plugins.add(Wrapper(), name="wrapper", distribution="wrapper")
    train(load_config(data=toy_config(tmp_path, max_steps=2)), plugins=toy_plugins, progress=False)
    assert calls == ["first", "before:1", "last:1", "after:1", "before:2", "last:2", "after:2"]


def test_a_misspelled_hook_is_a_plugin_error(toy_plugins, capsys):
    class Typo:
        @hookimpl
        def on_step_ends(self, run, step, metrics):  # no such hook
            pass

    info = toy_plugins.add(Typo(), name="typo", distribution="lorakit-typo")
    assert info.status == "error" and "on_step_ends" in (info.error or "")
    code, out, _ = run_cli(capsys, "plugins", "--json")
    typo = next(p for p in json.loads(out) if p["name"] == "typo")
    assert typo["status"] == "error" and "on_step_ends" in typo["error"]


def test_a_raising_lifecycle_hook_is_named(toy_plugins, tmp_path):
    from lorakit.engine import train
    from lorakit.errors import RunError

    class Broken:
        @hookimpl
        def on_step_end(self, run, step, metrics):
            raise ValueError("boom")

    toy_plugins.add(Broken(), name="broken", distribution="broken")
    with pytest.raises(RunError, match="plugin broken failed in on_step_end: ValueError: boom"):
        train(
            load_config(data=toy_config(tmp_path, max_steps=1)), plugins=toy_plugins, progress=False
        )


def test_a_raising_registration_hides_only_that_plugin(toy_plugins):
    class Bad:
        @hookimpl
        def register_trackers(self, register):
            raise RuntimeError("no tracker for you")

    toy_plugins.add(Bad(), name="bad", distribution="bad")
    registries = toy_plugins.registries
    assert "jsonl" in registries.trackers and "toy" in registries.backends
    assert toy_plugins.infos["bad"].status == "error"
    assert "no tracker for you" in (toy_plugins.infos["bad"].error or "")


# -- 3. overrides ------------------------------------------------------------------------------


class SGDAsAdamW:
    """A third party replacing the built-in ``adamw`` with plain SGD."""

    LORAKIT_PLUGIN_API = 1
    made: list[str] = []

    @hookimpl
    def register_optimizers(self, register):
        def sgd(params, lr, **args):
            import torch

            SGDAsAdamW.made.append("sgd")
            return torch.optim.SGD(params, lr=lr)

        register(OptimizerSpec("adamw", sgd, "SGD under adamw's name"))


def test_a_third_party_overrides_a_builtin_and_trains_with_it(toy_plugins, tmp_path, capsys):
    from lorakit.engine import train

    toy_plugins.add(SGDAsAdamW(), name="sgdplugin", distribution="lorakit-sgd")
    SGDAsAdamW.made = []
    cfg = load_config(data=toy_config(tmp_path, max_steps=2, optimizer="adamw"))
    train(cfg, plugins=toy_plugins, progress=False)
    assert SGDAsAdamW.made == ["sgd"]
    header = capsys.readouterr().out
    assert "plugin override: optimizer 'adamw' of lorakit is replaced by lorakit-sgd" in header
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and "optimizer 'adamw' of lorakit is replaced by lorakit-sgd" in out


def test_overriding_a_first_party_backend_does_not_depend_on_load_order():
    from lorakit.backend_plugin import BackendPlugin
    from lorakit.registry import Registry

    class SD(BackendPlugin):
        name, task_types = "sd", ("image-generation",)

    ours, theirs = SD(), SD()
    for order in (
        ((ours, "lorakit-sd"), (theirs, "lorakit-fastsd")),
        (
            (theirs, "lorakit-fastsd"),
            (ours, "lorakit-sd"),
        ),
    ):
        registry: Registry[BackendPlugin] = Registry("backend")
        for spec, dist in order:
            registry.add(spec, plugin=dist, distribution=dist, version="1")
        assert registry.entry("sd").distribution == "lorakit-fastsd"
        assert [str(o) for o in registry.overrides] == [
            "backend 'sd' of lorakit-sd is replaced by lorakit-fastsd (plugin lorakit-fastsd)"
        ]


def test_two_third_parties_claiming_a_name_is_an_error_naming_both(toy_plugins):
    class Memory:
        def __init__(self):
            self.LORAKIT_PLUGIN_API = 1

        @hookimpl
        def register_trackers(self, register):
            register(TrackerSpec("memory", dict, "x"))

    toy_plugins.add(Memory(), name="one", distribution="lorakit-one")
    toy_plugins.add(Memory(), name="two", distribution="lorakit-two")
    with pytest.raises(PluginError) as info:
        toy_plugins.check()
    text = str(info.value)
    assert "lorakit-one" in text and "lorakit-two" in text and "LORAKIT_DISABLE_PLUGINS" in text


# -- 4. validate what train will refuse ---------------------------------------------------------


def test_config_validate_reports_every_error_with_file_and_line(toy_plugins, tmp_path, capsys):
    data = toy_config(
        tmp_path,
        optimizer="adamww",
        lr_scheduler="cosin",
        trackers=["jsonl", "tensorbord"],
        export_formats=["safetensor"],
        lora_rank=-1,
    )
    path = write_config(tmp_path / "bad.yaml", data)
    code, _, err = run_cli(capsys, "config", "validate", path)
    assert code == 2
    lines = err.strip().splitlines()
    text = yaml.safe_dump(data, sort_keys=False).splitlines()

    def line_of(key: str) -> int:
        return next(i for i, t in enumerate(text, 1) if t.startswith(f"{key}:"))

    expected = {
        "lora_rank": None,
        "optimizer": "did you mean 'adamw'",
        "lr_scheduler": "did you mean 'cosine'",
        "trackers": "did you mean 'tensorboard'",
        "export_formats": "did you mean 'safetensors'",
    }
    assert len(lines) == len(expected), err
    for key, hint in expected.items():
        match = [ln for ln in lines if f"{path}:" in ln and f" {key}: " in ln]
        assert match, (key, err)
        assert f"{path}:{line_of(key)}" in match[0] or key == "trackers", match[0]
        if hint:
            assert hint in match[0]


def test_train_refuses_an_unknown_optimizer_before_loading_anything(toy_plugins, tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", toy_config(tmp_path, optimizer="adamww"))
    code, out, err = run_cli(capsys, "train", "--config", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{path}:" in err and "optimizer: unknown optimizer 'adamww'" in err
    assert not (tmp_path / "run").exists()


# -- 5. the seed's words ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [("image", "image-generation"), ("text", "text-generation")],
)
def test_short_task_types_are_accepted(written, meant):
    from lorakit.config.schema import TrainConfig

    cfg = TrainConfig(task_type=written, base_model="x", train_data_dir=".")
    assert cfg.task_type == meant


def test_mixed_precision_no_in_yaml_and_in_set(toy_plugins, tmp_path):
    path = tmp_path / "c.yaml"
    text = yaml.safe_dump(toy_config(tmp_path)) + "mixed_precision: no\n"
    path.write_text(text)
    assert load_config(path).train.mixed_precision == "no"
    cfg = load_config(data=toy_config(tmp_path), overrides=["mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"


# -- 6. files users share -------------------------------------------------------------------


def test_outputs_follow_the_users_umask(toy_plugins, tmp_path):
    from lorakit.engine import train

    old = os.umask(0o022)
    try:
        cfg = load_config(data=toy_config(tmp_path, max_steps=2, save_steps=1))
        result = train(cfg, plugins=toy_plugins, progress=False)
    finally:
        os.umask(old)
    out = result.output_dir
    files = [*result.outputs, out / "config.yaml", out / "run.json"]
    for path in files:
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o644, path
    for folder in (out / "checkpoints").iterdir():
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "/abs/name"])
def test_output_name_cannot_escape_output_dir(toy_plugins, tmp_path, name):
    with pytest.raises(ConfigError, match="output_name: must be a file name"):
        load_config(data=toy_config(tmp_path, output_name=name))


def test_provenance_scrubs_paths_at_every_depth():
    from lorakit.provenance import shareable_config

    home = "/home/someone/secret"
    data = {
        "base_model": f"{home}/v1-5.safetensors",
        "sd": {"vae_model": f"{home}/vae.safetensors", "subsets": [{"image_dir": f"{home}/a"}]},
        "llm": {"eval_data": f"{home}/eval.jsonl", "chat_template": "{{ messages }}"},
        "other": "runwayml/stable-diffusion-v1-5",
    }
    text = json.dumps(shareable_config(data))
    assert "/home" not in text and "someone" not in text
    assert "runwayml/stable-diffusion-v1-5" in text and "{{ messages }}" in text
