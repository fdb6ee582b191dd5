"""``lorakit plugins``, ``lorakit version``, ``lorakit doctor`` and ``lorakit inspect``.

None of them imports torch at start: ``version`` reads package metadata (and torch's
``version.py`` as text), ``inspect`` reads safetensors headers, and only ``doctor`` imports
torch, inside its torch check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lorakit import PLUGIN_API_VERSION, __version__
from lorakit.terminal_text import rich_text

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _plain(text: str) -> None:
    """Print one line of file text as text: no markup, escapes shown, no wrapping."""
    Console(soft_wrap=True, highlight=False).print(rich_text(text))


def print_version(report: dict[str, Any], releases: list[Any] | None, skipped: list[str]) -> None:
    """The text form of ``lorakit version [--check]``."""
    from lorakit.diagnostics.update_check import upgrade_command

    console = Console(soft_wrap=True, highlight=False)
    console.print(
        f"lorakit {report['lorakit']} (plugin API {report['plugin_api']}), "
        f"Python {report['python']}"
    )
    for p in report["plugins"]:
        state = (
            "" if p["status"] == "ok" else f"  [red]{p['status']}[/]: {rich_text(p['error'] or '')}"
        )
        console.print(
            f"  plugin {rich_text(p['distribution'])} {rich_text(p['version'])} "
            f"(entry point {rich_text(p['name'])}, API {p['plugin_api']}){state}"
        )
    for name, v in report["libraries"].items():
        extra = ""
        if name == "torch" and v and report.get("accelerator"):
            extra = f" ({report['accelerator']})"
        console.print(f"  {name} {v or '[dim]not installed[/]'}{extra}")
    if releases is None:
        return
    for r in releases:
        if r.error:
            console.print(f"[yellow]{rich_text(r.name)}[/]: {rich_text(r.error)}")
        elif r.behind:
            console.print(
                f"[yellow]{rich_text(r.name)} {rich_text(r.latest)} is out[/] (you have {rich_text(r.installed)})"
            )
            for line in r.changes:
                console.print(f"    {rich_text(line)}")
            if not r.changes and r.changelog_url:
                console.print(f"    changes: {rich_text(r.changelog_url)}")
        elif r.latest:
            console.print(f"[green]{rich_text(r.name)} {rich_text(r.installed)} is current[/]")
    for name in skipped:
        console.print(f"{rich_text(name)}: installed from a folder or VCS URL, not looked up")
    command = upgrade_command(releases)
    if command:
        console.print(f"upgrade: {command}")


def plugins(
    as_json: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Include built-ins.")] = False,
) -> None:
    """List installed plugins, what each registered, and any that failed to load."""
    from lorakit.plugins import get_plugins

    manager = get_plugins()
    _ = manager.registries
    infos = [i for i in manager.infos.values() if all_ or not i.builtin]
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    table = Table(title=f"lorakit {__version__} plugins (API {PLUGIN_API_VERSION})")
    for col in ("plugin", "distribution", "version", "registers", "status"):
        table.add_column(col)
    for info in infos:
        registers = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in info.registered.items()
        )
        status = (
            "[green]ok[/]"
            if info.status == "ok"
            else f"[red]{info.status}[/]: {rich_text(info.error or '')}"
        )
        table.add_row(
            rich_text(info.name),
            rich_text(info.distribution),
            rich_text(info.version),
            rich_text(registers),
            status,
        )
    Console().print(table)
    for line in manager.overrides():
        Console().print(f"[yellow]override[/]: {rich_text(line)}")
    for conflict in manager.conflicts:
        Console(stderr=True).print(f"[red]conflict[/]: {rich_text(conflict)}")


def version(
    as_json: JsonOpt = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Ask the package index (LORAKIT_INDEX_URL) for newer releases; "
            "answers are cached for a day.",
        ),
    ] = False,
) -> None:
    """lorakit, plugin and library versions; --check compares them with the index."""
    from lorakit.diagnostics.versions import version_report

    report = version_report()
    releases = None
    skipped: list[str] = []
    if check:
        from lorakit.diagnostics import update_check

        names, skipped = update_check.distributions()
        releases = update_check.check(names)
        report["check"] = [r.as_dict() for r in releases]
        report["not_checked"] = skipped
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print_version(report, releases, skipped)


def doctor(
    as_json: JsonOpt = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Also check what this config needs (and its output_dir)."
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Check free space here (default: . or the config's)."),
    ] = None,
) -> None:
    """Check Python, torch and the GPU, versions, plugins, optional packages, disk, HF cache.

    Exits 1 when any check fails (✗).
    """
    from lorakit.diagnostics.doctor import Check, render, run_checks

    loaded = None
    problems: list[Check] = []
    if config is not None:
        from lorakit.config import load_config
        from lorakit.errors import LorakitError

        try:
            loaded = load_config(config, check_paths=False)
        except LorakitError as exc:
            problems.append(
                Check("config", "fail", exc.format(), f"lorakit config validate {config}")
            )
    checks = problems + run_checks(output_dir=output_dir, config=loaded)
    if as_json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        for line in render(checks):
            _plain(line)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def inspect_cmd(
    file: Annotated[
        Path,
        typer.Argument(
            help="A LoRA .safetensors file, a PEFT adapter folder, or whatever an installed "
            "backend identifies (llm: a GGUF adapter, a run folder)."
        ),
    ],
    as_json: JsonOpt = False,
    metadata: Annotated[
        bool, typer.Option("--metadata", help="Print long metadata values in full.")
    ] = False,
) -> None:
    """Show a LoRA's format, rank, alpha, target modules, metadata and what made it."""
    from lorakit.diagnostics.inspect import inspect_path, render

    report = inspect_path(file)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
        return
    for line in render(report, all_metadata=metadata):
        _plain(line)


def register(app: typer.Typer) -> None:
    app.command()(plugins)
    app.command()(version)
    app.command()(doctor)
    app.command("inspect")(inspect_cmd)
