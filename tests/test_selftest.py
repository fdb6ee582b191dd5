"""``lorakit selftest``: green on this install, red when a plugin breaks an exporter;
``lorakit doctor`` points to it when the install changed since the last passing run."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest

from lorakit.testing import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _plugins(*extra: tuple[str, Any]) -> Any:
    import lorakit_llm.plugin
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(
        entry_points=False,
        extra=[("lorakit-sd", lorakit_sd.plugin), ("lorakit-llm", lorakit_llm.plugin), *extra],
    )
    set_plugins(plugins)
    return plugins


@pytest.fixture
def state(tmp_path, monkeypatch) -> Any:
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "selftest.json"
    from lorakit.plugins import set_plugins

    set_plugins(None)


def test_selftest_is_green_and_doctor_points_to_it_after_an_upgrade(tmp_path, capsys, state):
    from lorakit.diagnostics.doctor import check_selftest

    plugins = _plugins()
    assert "never run" in check_selftest(plugins).message
    code, out, err = run_cli(capsys, "selftest", "--keep", str(tmp_path / "work"))
    assert code == 0, out + err
    table = out[out.index("lorakit selftest") :]
    for backend in ("sd", "llm"):
        for check in ("build", "train", "export", "reload", "resume"):
            assert any(
                line.count(backend) and check in line and "✓" in line for line in table.splitlines()
            ), (backend, check, table)
    assert "✗" not in table and "all checks passed" in out
    assert "torch 2." in out and "peft " in out  # the versions it ran with
    # The llm reload check also merges the adapter into a GGUF base (lorakit merge).
    assert "merged on" in table and "the GGUF base within" in table
    # Only the ✓ lines and the table: not the tiny runs' own headers, warnings or bars.
    assert err.strip() == "", err
    assert [line for line in out[: out.index("lorakit selftest")].splitlines() if line.strip()] == [
        line for line in out.splitlines() if line.startswith("✓")
    ], out
    assert check_selftest(plugins).status == "ok"
    # An upgrade since: doctor says what changed and points to the selftest.
    data = json.loads(state.read_text())
    data["versions"]["peft"] = "0.0.1"
    state.write_text(json.dumps(data))
    check = check_selftest(plugins)
    assert check.status == "warn" and "peft 0.0.1 → " in check.message
    assert "lorakit selftest" in (check.fix or "")
    code, out, err = run_cli(capsys, "doctor")
    assert "selftest: the install changed since the last selftest" in out


def _broken_exporter() -> types.ModuleType:
    """A third-party plugin whose ``peft`` exporter writes adapter keys PEFT does not know
    (``lora_down`` instead of ``lora_A``): PEFT loads such a file without an error and
    leaves the LoRA at its initial values."""
    from lorakit.api import ExporterSpec, hookimpl

    def export(backend: Any, directory: Any, name: str, metadata: dict[str, str]) -> Any:
        from lorakit_llm.export import export_peft
        from safetensors.torch import load_file, save_file

        paths = export_peft(backend, directory, name, metadata)
        weights = paths[0] / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        save_file({k.replace("lora_A", "lora_down"): v for k, v in tensors.items()}, str(weights))
        return paths

    module = types.ModuleType("broken_exporter")

    @hookimpl
    def register_exporters(register: Any) -> None:
        register(ExporterSpec("peft", export, "a broken PEFT exporter", backends=("llm",)))

    module.register_exporters = register_exporters  # type: ignore[attr-defined]
    return module


def test_selftest_is_red_when_a_plugin_breaks_an_exporter(tmp_path, capsys, state):
    _plugins(("lorakit-broken", _broken_exporter()))
    code, out, err = run_cli(capsys, "selftest", "--backend", "llm")
    assert code == 1
    table = out[out.index("lorakit selftest") :]
    reload = next(line for line in table.splitlines() if "reload" in line)
    assert "✗" in reload and "adapter keys do not match" in table
    assert "check(s) failed" in out
    assert not state.exists()  # a failed selftest records nothing
