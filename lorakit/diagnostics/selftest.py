"""``lorakit selftest``: "test in a sandbox before you upgrade", as one command.

For every installed backend that ships a stand-in model (``BackendPlugin.demo``,
the same builder ``lorakit demo`` uses), offline and on the CPU:

1. build the tiny model, its data and a config;
2. train a few steps through the same engine ``lorakit train`` uses (the loss is finite);
3. export with the backend's exporters (every output exists);
4. reload the exported files with the real client (``BackendPlugin.selftest``: diffusers'
   ``load_lora_weights``, PEFT's ``PeftModel.from_pretrained``; the GGUF base is read by
   transformers' GGUF loader) and check they change the model as trained;
5. resume: the run's mid-run checkpoint, resumed to the end, gives the same LoRA tensors as the
   uninterrupted run.

Each check runs with its own output captured: the runs are deliberately tiny and short, so
what training prints for a real run (the run header, "only 4 optimizer steps" warnings,
library progress bars) would be noise here. A failed check shows the last lines it printed
under its ✗. Everything ``selftest`` prints goes to stdout.

The versions of lorakit, its plugins and the libraries are printed with the ✓/✗ table and
recorded after a run where everything passed, so ``lorakit doctor`` can say when the
install changed since the last selftest.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Steps of the selftest runs (the resumed run stops halfway).
STEPS = 4
STEPS_NAMES = ("build", "train", "export", "reload", "resume")


@dataclass
class Result:
    backend: str
    check: str
    ok: bool
    detail: str
    seconds: float = 0.0
    output: str = ""  # what the check printed (shown when it failed)


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)


def state_path() -> Path:
    """Where the versions of the last passing selftest are kept (beside the update check)."""
    from lorakit.diagnostics.update_check import cache_path

    return cache_path().parent / "selftest.json"


def current_versions(plugins: Any = None) -> dict[str, str | None]:
    """lorakit, every plugin distribution and the libraries it runs on."""
    from lorakit import __version__
    from lorakit.provenance import library_versions, plugin_versions

    versions: dict[str, str | None] = {"lorakit": __version__}
    versions.update(plugin_versions(plugins))
    versions.update(library_versions())
    return versions


def recorded_versions() -> dict[str, Any] | None:
    try:
        data = json.loads(state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def changed_since_selftest(plugins: Any = None) -> list[str] | None:
    """``name old → new`` for what changed since the last passing selftest (None: never ran)."""
    data = recorded_versions()
    if data is None:
        return None
    old = data.get("versions", {})
    new = current_versions(plugins)
    return [
        f"{name} {old.get(name) or '-'} → {new.get(name) or '-'}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]


def _record(report: Report) -> None:
    from lorakit.io import write_text
    from lorakit.provenance import now

    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"when": now(), "versions": report.versions}, indent=2) + "\n")


def _tensors(paths: list[str] | list[Path]) -> dict[str, Any]:
    """Every tensor of every .safetensors file under ``paths``, keyed by file and name."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for path in map(Path, paths):
        files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
        for file in files:
            if file.suffix != ".safetensors":
                continue
            base = path if path.is_dir() else path.parent
            for name, tensor in load_file(file).items():
                out[f"{file.relative_to(base)}:{name}"] = tensor
    return out


def _config(path: Path, output_dir: Path, *extra: str) -> Any:
    from lorakit.config import load_config

    overrides = [
        f"max_steps={STEPS}",
        f"save_steps={STEPS // 2}",
        "sample_prompts=[]",
        "sample_every_n_steps=0",
        "trackers=[jsonl]",
        f"output_dir={output_dir}",
        "output_name=selftest",
        *extra,
    ]
    return load_config(path, overrides=overrides)


def check_backend(name: str, spec: Any, folder: Path, emit: Callable[[Result], None]) -> None:
    """Run the five checks of one backend; a failed check skips those that need it."""
    from lorakit.builtins.trackers import read_metrics
    from lorakit.engine import train

    def step(check: str, work: Callable[[], str]) -> bool:
        start = time.perf_counter()
        printed = io.StringIO()
        try:
            with (
                contextlib.redirect_stdout(printed),
                contextlib.redirect_stderr(printed),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                detail = work()
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is a ✗, never a crash
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            detail, ok = f"{type(exc).__name__}: {text}", False
        result = Result(name, check, ok, detail, time.perf_counter() - start)
        result.output = printed.getvalue()
        emit(result)
        return ok

    state: dict[str, Any] = {}

    def build() -> str:
        state["config"] = Path(spec.demo(folder / "model"))
        return f"stand-in model and data in {folder / 'model'}"

    def run() -> str:
        config = _config(state["config"], folder / "run")
        result = train(config, progress=False)
        losses = [row["loss"] for row in read_metrics(result.output_dir)]
        if result.steps != STEPS or not losses or not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"{result.steps} steps, losses {losses}")
        state["result"], state["run_config"] = result, config
        return f"{result.steps} steps, loss {losses[0]:.4f} → {losses[-1]:.4f}"

    def export() -> str:
        outputs = state["result"].outputs
        missing = [p for p in outputs if not Path(p).exists()]
        if not outputs or missing:
            raise RuntimeError(f"missing outputs: {missing or 'none written'}")
        if not _tensors(outputs):
            raise RuntimeError("no tensors in the exported files")
        return ", ".join(Path(p).name for p in outputs)

    def reload() -> str:
        if not spec.supports("selftest"):
            raise RuntimeError(f"backend {name} has no reload check (BackendPlugin.selftest)")
        return str(spec.selftest(state["result"].output_dir, state["run_config"]))

    def resume() -> str:
        # The uninterrupted run's mid-run checkpoint, continued in a folder of its own.
        mid = Path(state["result"].output_dir) / "checkpoints" / f"step-{STEPS // 2}"
        target = folder / "resumed"
        shutil.copytree(mid, target / "checkpoints" / mid.name)
        resumed = train(_config(state["config"], target), resume="latest", progress=False)
        whole, parts = _tensors(state["result"].outputs), _tensors(resumed.outputs)
        if whole.keys() != parts.keys():
            raise RuntimeError("the resumed run exported other tensors")
        worst = max(float((whole[k].float() - parts[k].float()).abs().max()) for k in whole)
        if worst > 1e-5:
            raise RuntimeError(f"resumed LoRA differs from the uninterrupted one by {worst:.2e}")
        return f"{STEPS // 2} + {STEPS - STEPS // 2} steps == {STEPS} steps ({len(whole)} tensors)"

    if step("build", build) and step("train", run) and step("export", export):
        step("reload", reload)
        step("resume", resume)


def run_selftest(
    backends: list[str] | None = None,
    *,
    keep: Path | None = None,
    console: Any = None,
    plugins: Any = None,
) -> Report:
    """Check every (or each named) backend; records the versions when all passed."""
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    available = plugins.registries.backends_with("demo", backends, what="stand-in model")
    report = Report(versions=current_versions(plugins))
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="lorakit-selftest-"))
    start = time.perf_counter()
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a selftest never downloads

    def emit(result: Result) -> None:
        report.results.append(result)
        if console is not None:
            mark = "[green]✓[/]" if result.ok else "[red]✗[/]"
            console.print(f"{mark} {result.backend} {result.check} ({result.seconds:.1f} s)")
            if not result.ok and result.output.strip():
                for line in result.output.strip().splitlines()[-5:]:
                    console.print(f"    {line}", markup=False, style="dim")

    try:
        for name in available:
            folder = root / name
            if folder.exists():
                shutil.rmtree(folder)
            check_backend(name, available[name], folder, emit)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    if report.ok:
        _record(report)
    return report


def render(report: Report, console: Any) -> None:
    """The ✓/✗ table, the versions it ran with, and the verdict."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="lorakit selftest")
    for column in ("", "backend", "check", "result"):
        table.add_column(column, overflow="fold")
    for r in report.results:
        mark = "[green]✓[/]" if r.ok else "[red]✗[/]"
        style = "" if r.ok else "[red]"
        table.add_row(mark, r.backend, r.check, f"{style}{escape(r.detail)}")
    console.print(table)
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items() if v)
    console.print(f"[dim]{escape(versions)}[/]")
    if report.ok:
        console.print(f"[green]all checks passed[/] in {report.seconds:.0f} s")
    else:
        failed = sum(not r.ok for r in report.results)
        console.print(f"[red]{failed} check(s) failed[/] in {report.seconds:.0f} s")
