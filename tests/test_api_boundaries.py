"""The plugin API's boundaries, checked on the source: plugins import only ``lorakit.api``,
the core has no import cycle, exporters see the typed view and never the backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import toy_config

from lorakit.api import hookimpl
from lorakit.config import load_config
from lorakit.testing import run_cli

ROOT = Path(__file__).resolve().parent.parent


# -- 8. one public API (7: importable without torch, in test_plugins.py) ---------------------------------------------


PLUGIN_SOURCES = sorted(
    [
        *(
            ROOT / name / "src"
            for name in ("lorakit_sd", "lorakit_llm", "lorakit_labelers", "lorakit_ui")
        ),
        *(ROOT / "plugins").glob("*/src"),
    ]
)


def _lorakit_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if node.module == "lorakit":
                found += names[1:]
            elif node.module.startswith("lorakit."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "lorakit"]
    return found


#: Applications built on lorakit (not plugins) also import lorakit.app.
APPLICATIONS = {ROOT / "lorakit_ui" / "src"}


def test_plugin_packages_use_only_the_public_api():
    offenders = []
    for src in PLUGIN_SOURCES:
        allowed = ("lorakit.api", "lorakit.app") if src in APPLICATIONS else ("lorakit.api",)
        for path in src.rglob("*.py"):
            for module in _lorakit_imports(path):
                if module.split(".")[:2] not in [a.split(".") for a in allowed]:
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert [s for s in PLUGIN_SOURCES if s.exists()], "no plugin package found"
    assert not offenders, "\n".join(offenders)


def test_every_name_of_the_plugin_api_is_used_by_a_plugin_or_documented():
    """``lorakit.api`` is the plugin API only: each name is imported by a plugin package
    (applications aside) or documented for plugin authors; what only the page uses lives
    in ``lorakit.app``."""
    import re

    import lorakit.api
    import lorakit.app

    plugins = [s for s in PLUGIN_SOURCES if s not in APPLICATIONS]
    code = "\n".join(p.read_text(encoding="utf-8") for s in plugins for p in s.rglob("*.py"))
    docs = "\n".join(
        (ROOT / "docs" / name).read_text(encoding="utf-8")
        for name in ("plugin-hooks.md", "writing-plugins.md")
    )
    unused = [
        name
        for name in lorakit.api.__all__
        if not re.search(rf"\b{re.escape(name)}\b", code)
        and not re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", docs)
    ]
    assert not unused, f"in lorakit.api but used by no plugin and undocumented: {unused}"
    assert not set(lorakit.api.__all__) & set(lorakit.app.__all__)


def _imports_of(path: Path, package: str) -> list[str]:
    """The modules of ``package`` that ``path`` imports (any depth of its code)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package or node.module.startswith(package + "."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == package]
    return found


def test_family_packages_use_only_lorakit_sds_published_api():
    """A package in plugins/ reaches lorakit-sd through ``lorakit_sd.api`` alone."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for src in (ROOT / "plugins").glob("*/src")
        for path in src.rglob("*.py")
        for module in _imports_of(path, "lorakit_sd")
        if module != "lorakit_sd.api"
    ]
    assert list((ROOT / "plugins").glob("*/src/*/family.py")), "no family package found"
    assert not offenders, "\n".join(offenders)


def test_the_import_check_catches_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from lorakit.plugins import lazy\nfrom lorakit import config\nimport lorakit.io\n"
    )
    assert _lorakit_imports(bad) == ["lorakit.plugins", "lorakit.config", "lorakit.io"]


def test_commands_pick_backends_that_provide_them(toy_plugins, tmp_path, capsys):
    """`lorakit demo` and `lorakit selftest` need a backend's stand-in model."""
    from lorakit.errors import UsageError

    with pytest.raises(UsageError, match=r"no demo for backend toy: pip install lorakit-llm"):
        toy_plugins.registries.backends_with("demo", ["toy"], what="demo")
    code, _, err = run_cli(capsys, "demo", "--output", tmp_path)
    assert code == 2 and "no demo for backend (none installed)" in err


# -- 7. a core without import cycles ---------------------------------------------------------


def _imports(src: Path, package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (under ``src``) → the modules of that package it imports, at
    any depth of its code (lazy imports in functions count), except ``if TYPE_CHECKING:``."""
    root = src / package
    names = {
        ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in names:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names} & set(names)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & set(names)
        graph[name] = deps - {name}
    return graph


def _core_imports() -> dict[str, set[str]]:
    return _imports(ROOT, "lorakit")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_core_has_no_import_cycle():
    assert _cycles(_core_imports()) == []


PACKAGES = sorted(
    (src, package.name)
    for src in PLUGIN_SOURCES
    for package in src.glob("*")
    if (package / "__init__.py").is_file()
)


@pytest.mark.parametrize(("src", "package"), PACKAGES, ids=[p for _, p in PACKAGES])
def test_no_plugin_package_has_an_import_cycle(src, package):
    """Every package of lorakit's distributions and of plugins/, function-level imports
    counted (``lorakit_sd``, ``lorakit_llm``, ..., ``lorakit_family_sana``)."""
    assert _cycles(_imports(src, package)) == []


def test_every_plugin_package_is_checked_for_cycles():
    checked = {package for _, package in PACKAGES}
    assert {"lorakit_sd", "lorakit_llm", "lorakit_labelers", "lorakit_family_sana"} <= checked


def test_the_cycle_check_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- 9. exporters see a typed view, never the backend (issue 25) ------------------------------


def _exporter_functions() -> list[tuple[str, str, str]]:
    """``(exporter name, module, function)`` of every installed exporter (entry points)."""
    import inspect

    from lorakit.plugins import build_plugins

    found = []
    for entry in build_plugins(entry_points=True).registries.exporters:
        factory = entry.spec.factory
        target = factory.__name__.removeprefix("lazy(").removesuffix(")")
        if ":" in target:
            module, function = target.split(":")
        else:
            module, function = inspect.getmodule(factory).__name__, factory.__name__
        found.append((entry.spec.name, module, function))
    return found


def exporter_offences(source: str, function: str) -> list[str]:
    """What a module's exporter ``function`` (and the module around it) does that reaches
    past its typed view: a first parameter not annotated ``AdapterExport``, any name
    ``backend``, getattr / hasattr / vars on the view or a backend."""
    tree = ast.parse(source)
    offences = []
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    if not defs:
        return [f"no function {function}"]
    first = defs[0].args.args[0]
    if first.annotation is None or "AdapterExport" not in ast.unparse(first.annotation):
        offences.append(f"{function}({first.arg}: ...) is not typed AdapterExport")
    views = {first.arg}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "backend":
            offences.append(f"line {node.lineno}: names a backend")
        if isinstance(node, ast.arg) and node.arg == "backend":
            offences.append(f"line {node.lineno}: takes a backend")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "vars")
            and node.args
            and isinstance(node.args[0], ast.Name)
            and (node.args[0].id in views or "backend" in node.args[0].id)
        ):
            offences.append(f"line {node.lineno}: {node.func.id}({node.args[0].id}, ...)")
    return offences


def test_exporters_use_only_the_typed_view():
    import importlib.util

    exporters = _exporter_functions()
    assert {"safetensors", "kohya", "diffusers", "peft"} <= {name for name, _, _ in exporters}
    offenders = []
    for name, module, function in exporters:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        source = Path(spec.origin).read_text(encoding="utf-8")
        offenders += [f"{name} ({module}): {o}" for o in exporter_offences(source, function)]
    assert not offenders, "\n".join(offenders)


def test_the_exporter_check_catches_a_backend_reach():
    bad = (
        "def export(backend, directory, name, metadata):\n"
        "    if not hasattr(backend, 'save_adapter'):\n"
        "        return getattr(backend, 'max_tokens', 75)\n"
    )
    found = exporter_offences(bad, "export")
    assert "export(backend: ...) is not typed AdapterExport" in found
    assert any("hasattr(backend" in o for o in found) and any("getattr(backend" in o for o in found)
    typed = (
        "def export(view: AdapterExport, directory, name, metadata):\n"
        "    return getattr(view, 'unet')\n"
    )
    assert exporter_offences(typed, "export") == ["line 2: getattr(view, ...)"]


def test_the_engine_hands_exporters_the_typed_view(toy_plugins, tmp_path):
    """A third party's exporter receives an AdapterExport, whose tensors are the trained
    LoRA the built-in exporter writes, and whose network is the config's."""
    from safetensors.torch import load_file

    from lorakit.api import AdapterExport, ExporterSpec, save_safetensors
    from lorakit.engine import train

    seen: list[object] = []

    def export(view, directory, name, metadata):
        seen.append(view)
        path = Path(directory) / f"{name}.third.safetensors"
        save_safetensors(dict(view.state_dict()), path, metadata=metadata)
        return [path]

    class ThirdExporter:
        @hookimpl
        def register_exporters(self, register):
            register(ExporterSpec("third", export, "a third party's exporter"))

    toy_plugins.add(ThirdExporter(), name="third", distribution="lorakit-third")
    cfg = load_config(
        data=toy_config(
            tmp_path,
            max_steps=2,
            lora_rank=3,
            lora_alpha=6,
            export_formats=["third", "safetensors"],
        )
    )
    result = train(cfg, plugins=toy_plugins, progress=False)
    view = seen[-1]  # the final export (checkpoints export too)
    assert isinstance(view, AdapterExport) and view.backend == "toy"
    assert (view.network.rank, view.network.alpha) == (3, 6.0)
    ours = load_file(str(result.output_dir / f"{cfg.train.name}.third.safetensors"))
    builtin = load_file(str(result.output_dir / f"{cfg.train.name}.lorakit.safetensors"))
    assert ours.keys() == builtin.keys() and ours
    for key in ours:
        assert ours[key].equal(builtin[key])
