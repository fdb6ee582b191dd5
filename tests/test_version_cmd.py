"""``lorakit version``: lorakit, plugins, key libraries; fast (no torch import)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import lorakit
from lorakit import PLUGIN_API_VERSION, __version__
from lorakit.diagnostics.versions import _constants, torch_build
from lorakit.plugins import build_plugins, set_plugins
from lorakit.testing import run_cli

PYTHON = str(Path(sys.executable))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, *args)
    return code, out + err


@pytest.fixture
def plugins() -> Iterator[None]:
    """One working plugin and one whose registration raises (with rich-markup-like text)."""
    good = types.ModuleType("good")
    good.LORAKIT_PLUGIN_API = 1  # type: ignore[attr-defined]
    bad = types.ModuleType("bad")

    @lorakit.hookimpl
    def register_labelers(register):  # type: ignore[no-untyped-def]
        raise RuntimeError("broken [bold]on purpose[/bold]")

    bad.register_labelers = register_labelers  # type: ignore[attr-defined]
    manager = build_plugins(entry_points=False)
    manager.add(good, name="good", distribution="lorakit-good", version="1.2.3")
    manager.add(bad, name="bad", distribution="lorakit-bad", version="0.0.1")
    set_plugins(manager)
    yield
    set_plugins(None)


def test_version_lists_plugins_and_libraries(plugins, capsys):
    code, out = run(capsys, "version")
    assert code == 0
    assert f"lorakit {__version__} (plugin API {PLUGIN_API_VERSION})" in out
    assert "plugin lorakit-good 1.2.3 (entry point good, API 1)" in out
    assert "lorakit-bad 0.0.1" in out and "error" in out
    assert "broken [bold]on purpose[/bold]" in out  # shown as written, not as markup
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes"):
        assert f"  {name} " in out
    assert "build)" in out  # torch's CUDA/ROCm/CPU build


def test_version_json(plugins, capsys):
    code, out = run(capsys, "version", "--json")
    report = json.loads(out)
    assert report["lorakit"] == __version__ and report["plugin_api"] == PLUGIN_API_VERSION
    by_dist = {p["distribution"]: p for p in report["plugins"]}
    assert by_dist["lorakit-good"] == {
        "name": "good",
        "distribution": "lorakit-good",
        "version": "1.2.3",
        "plugin_api": 1,
        "status": "ok",
        "error": None,
    }
    assert by_dist["lorakit-bad"]["status"] == "error"
    import importlib.metadata as md

    assert report["libraries"]["torch"] == md.version("torch")
    assert set(report["torch_build"]) == {"version", "cuda", "hip"}
    assert "check" not in report


def test_torch_build_is_read_without_importing_torch(tmp_path):
    version_py = tmp_path / "version.py"
    version_py.write_text(
        "from typing import Optional\n__version__ = '2.5.1+cu121'\ncuda: Optional[str] = '12.1'\n"
        "hip: Optional[str] = None\ngit_version = 'abc'\n"
    )
    assert _constants(version_py) == {
        "__version__": "2.5.1+cu121",
        "cuda": "12.1",
        "hip": None,
        "git_version": "abc",
    }
    build = torch_build()
    assert build is not None and build["version"]


@pytest.mark.parametrize("args", [["--help"], ["version"], ["version", "--json"], ["plugins"]])
def test_fast_commands_do_not_import_torch(args):
    code = (
        "import sys\nfrom lorakit.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]
