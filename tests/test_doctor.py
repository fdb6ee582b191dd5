"""``lorakit doctor``: each check's ✓/⚠/✗, its fix line, and the exit code."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import toy_config

import lorakit
from lorakit.diagnostics import doctor, storage
from lorakit.plugins import build_plugins, set_plugins
from lorakit.testing import run_cli, write_config

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, *args)
    return code, out + err


@pytest.fixture
def roomy_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every disk has 500 GiB free, whatever the test machine has."""
    usage = types.SimpleNamespace(total=1000 * GiB, used=500 * GiB, free=500 * GiB)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: usage)


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No update cache, an HF cache in tmp_path."""
    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "lorakit-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


def by_name(checks: list[doctor.Check], name: str) -> list[doctor.Check]:
    return [c for c in checks if c.name == name]


def test_tested_versions_is_the_constraints_file():
    shipped = doctor.tested_versions()
    expected = doctor.parse_pins((ROOT / "constraints.txt").read_text())
    assert shipped == expected, "run: cp constraints.txt lorakit/diagnostics/tested_versions.txt"
    assert shipped["torch"] and shipped["transformers"]


def test_healthy_install_exits_0(toy_plugins, roomy_disk, isolated, tmp_path, capsys):
    code, out = run(capsys, "doctor", "--output-dir", str(tmp_path))
    assert code == 0, out
    assert f"✓ python: Python {sys.version_info[0]}.{sys.version_info[1]}" in out
    assert "✓ torch: torch " in out
    assert "gpu: " in out  # ⚠ on a CPU machine, ✓ with a GPU
    assert "✓ disk: 500.0 GiB free" in out
    assert "✓ hf: cache " in out and str(tmp_path / "hf" / "hub") in out
    assert "✗" not in out and "0 problem(s)" in out


def test_json(toy_plugins, roomy_disk, isolated, tmp_path, capsys):
    code, out = run(capsys, "doctor", "--json", "--output-dir", str(tmp_path))
    checks = json.loads(out)
    assert {"python", "torch", "gpu", "versions", "plugins", "disk", "hf"} <= {
        c["name"] for c in checks
    }
    assert all(c["status"] in {"ok", "warn", "fail"} for c in checks)


@pytest.fixture
def broken_plugins() -> Iterator[None]:
    """One plugin whose registration raises, one built for a future plugin API."""
    bad = types.ModuleType("bad")

    @lorakit.hookimpl
    def register_labelers(register: Any) -> None:
        raise RuntimeError("no model files")

    bad.register_labelers = register_labelers  # type: ignore[attr-defined]
    future = types.ModuleType("future")
    future.LORAKIT_PLUGIN_API = 99  # type: ignore[attr-defined]
    plugins = build_plugins(entry_points=False)
    plugins.add(bad, name="bad", distribution="lorakit-bad", version="0.1.0")
    plugins.add(future, name="future", distribution="lorakit-future", version="3.0.0")
    set_plugins(plugins)
    yield
    set_plugins(None)


def test_broken_plugins_fail_with_a_fix(broken_plugins, roomy_disk, isolated, tmp_path, capsys):
    code, out = run(capsys, "doctor", "--output-dir", str(tmp_path))
    assert code == 1
    assert "✗ plugins: plugin bad (lorakit-bad 0.1.0): register_labelers raised RuntimeError" in out
    assert "fix: pip install -U lorakit-bad, or LORAKIT_DISABLE_PLUGINS=bad to skip it" in out
    assert "✗ plugins: plugin future (lorakit-future 3.0.0): built for plugin API 99" in out
    assert "⚠ plugins: no backend installed" in out
    assert "2 problem(s)" in out


def test_plugin_requirements(monkeypatch):
    """lorakit-sd pins transformers<5.24: a newer one is reported with what it needs."""
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda n: "5.30.0" if n == "transformers" else real(n))
    unmet = doctor.unmet_requirements("lorakit-sd")
    assert any(u.startswith("transformers") and "(have 5.30.0)" in u for u in unmet)
    assert doctor.unmet_requirements("not-installed-anywhere") == []


def test_versions_against_the_tested_set(monkeypatch):
    installed = {
        "torch": "2.13.0+cpu",
        "transformers": "5.24.0",
        "peft": "0.21.2",
        "bitsandbytes": "0.50.2",
    }
    monkeypatch.setattr(doctor, "_version", installed.get)
    tested = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"}
    checks = doctor.check_tested_versions(tested)
    text = {(c.status, c.message) for c in checks}
    assert ("ok", "2 key libraries match the tested set") in text  # torch (+cpu), peft
    assert ("warn", "transformers 5.24.0 is untested (tested: 5.23.0)") in text
    assert any(s == "warn" and m.startswith("bitsandbytes 0.50.2 is not in") for s, m in text)
    [conflict] = [c for c in checks if c.status == "fail"]
    assert "transformers 5.24.0 with peft 0.21.2" in conflict.message
    assert conflict.fix == "pip install 'transformers<5.24' (or peft>=0.22)"


def test_missing_torch_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
    [check] = doctor.check_torch()
    assert check.status == "fail" and "torch does not import" in check.message
    assert check.fix == f"pip install torch=={doctor.tested_versions()['torch']}"


@pytest.mark.parametrize(
    ("free", "status"), [(0.5 * GiB, "fail"), (5 * GiB, "warn"), (50 * GiB, "ok")]
)
def test_disk(monkeypatch, tmp_path, free, status):
    usage = types.SimpleNamespace(total=100 * GiB, used=0, free=int(free))
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: usage)
    check = doctor.check_disk(tmp_path / "not" / "yet" / "there")
    assert check.status == status
    assert (check.fix is None) == (status == "ok")


def test_disk_not_writable(monkeypatch, tmp_path):
    monkeypatch.setattr(storage.os, "access", lambda path, mode: False)
    check = doctor.check_disk(tmp_path)
    assert check.status == "fail" and "not writable" in check.message


def test_hf_settings(monkeypatch, tmp_path, roomy_disk):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check = doctor.check_hf()
    assert check.status == "ok"
    assert str(tmp_path / "hub-cache") in check.message and "offline" in check.message
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(storage.os, "access", lambda path, mode: False)
    check = doctor.check_hf()
    assert check.status == "warn" and check.fix == "set HF_HOME to a writable folder"


def test_optional_dependencies(monkeypatch, toy_plugins, tmp_path):
    from lorakit.config import load_config

    monkeypatch.setattr(doctor, "_version", lambda name: None)  # none installed
    checks = doctor.check_optional(["llm"])
    assert [(c.status, c.message.split()[0]) for c in checks] == [
        ("warn", "bitsandbytes"),
        ("warn", "gguf"),
        ("warn", "deepspeed"),
    ]
    assert checks[0].fix == "pip install 'lorakit[bnb]'"
    assert [c.message.split()[0] for c in doctor.check_optional(["sd"])] == [
        "bitsandbytes",
        "deepspeed",
    ]
    config = load_config(data=toy_config(tmp_path, optimizer="adamw8bit"), check_paths=False)
    checks = doctor.check_optional(["toy"], config)
    assert [(c.status, c.message) for c in checks] == [
        ("fail", "bitsandbytes is missing, and the config needs it (optimizer: adamw8bit)")
    ]


def test_config_option(toy_plugins, roomy_disk, isolated, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(doctor, "_version", lambda name: None if name == "bitsandbytes" else "1")
    config = write_config(tmp_path / "run.yaml", toy_config(tmp_path, optimizer="adamw8bit"))
    code, out = run(capsys, "doctor", "--config", str(config))
    assert code == 1 and "✗ optional: bitsandbytes is missing, and the config needs it" in out
    assert f"for {tmp_path / 'run'}" in out  # the config's output_dir
    config.write_text("lora_rank: [oops\n")
    code, out = run(capsys, "doctor", "--config", str(config))
    assert code == 1 and "✗ config: " in out and "invalid YAML" in out


def test_update_notice_from_cache(toy_plugins, monkeypatch, tmp_path):
    from lorakit.diagnostics import update_check

    monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LORAKIT_NO_UPDATE_CHECK", raising=False)
    url = f"{update_check.index_url()}/lorakit/json"
    (tmp_path / "update-check.json").write_text(
        json.dumps({"format": update_check.CACHE_FORMAT, url: {"t": 0, "latest": "99.0.0"}})
    )
    [check] = doctor.check_update()
    assert check.status == "warn" and "lorakit 99.0.0 is out" in check.message


def test_a_crashing_check_is_reported(monkeypatch, toy_plugins, roomy_disk, isolated, tmp_path):
    def boom() -> doctor.Check:
        raise KeyError("surprise")

    monkeypatch.setattr(doctor, "check_python", boom)
    checks = doctor.run_checks(output_dir=tmp_path)
    [python] = by_name(checks, "python")
    assert python.status == "warn" and "the check itself failed: KeyError" in python.message


def test_ascii_marks(monkeypatch):
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(encoding="ascii"))
    lines = doctor.render([doctor.Check("disk", "fail", "full", "free some space")])
    assert lines[:2] == ["FAIL disk: full", "    fix: free some space"]


def fake_torch(total_gib: float, available: bool = True, cuda: str | None = "12.1") -> Any:
    """Enough of torch for check_torch's GPU branch (no GPU on the test machines)."""
    props = types.SimpleNamespace(name="NVIDIA Test GPU", total_memory=int(total_gib * GiB))
    return types.SimpleNamespace(
        __version__="2.13.0+cu121",
        version=types.SimpleNamespace(cuda=cuda, hip=None),
        cuda=types.SimpleNamespace(
            is_available=lambda: available,
            device_count=lambda: 1,
            get_device_properties=lambda i: props,
            mem_get_info=lambda i: (int(total_gib * GiB * 0.9), int(total_gib * GiB)),
        ),
        backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: False)),
    )


def test_gpu_checks(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(80))
    torch_check, gpu = doctor.check_torch()
    assert torch_check.message == "torch 2.13.0+cu121"
    assert (gpu.status, gpu.message) == (
        "ok",
        "GPU 0: NVIDIA Test GPU, 80.0 GiB, 72.0 GiB free (CUDA 12.1)",
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch(6))
    gpu = doctor.check_torch()[1]
    assert gpu.status == "warn" and "small" in gpu.message and "gradient_checkpointing" in gpu.fix
    monkeypatch.setitem(sys.modules, "torch", fake_torch(80, available=False))
    gpu = doctor.check_torch()[1]
    assert gpu.status == "warn" and "built for CUDA/ROCm 12.1, but no GPU is usable" in gpu.message
