"""``lorakit plugins`` and ``lorakit version``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lorakit import PLUGIN_API_VERSION, __version__

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def register(app: typer.Typer) -> None:
    @app.command()
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
                "[green]ok[/]" if info.status == "ok" else f"[red]{info.status}[/]: {info.error}"
            )
            table.add_row(info.name, info.distribution, info.version, registers, status)
        Console().print(table)
        for conflict in manager.conflicts:
            Console(stderr=True).print(f"[red]conflict[/]: {conflict}")

    @app.command()
    def version(
        as_json: JsonOpt = False,
        check: Annotated[
            bool, typer.Option("--check", help="Ask the package index for newer releases.")
        ] = False,
    ) -> None:
        """lorakit, plugin and library versions; --check compares them with the index."""
        from lorakit.versions import version_report

        report = version_report()
        releases = None
        if check:
            from lorakit.update_check import check_all

            releases = check_all()
            report["check"] = [
                {"name": r.name, "installed": r.installed, "latest": r.latest, "behind": r.behind,
                 "error": r.error, "changes": r.changes}
                for r in releases
            ]  # fmt: skip
        if as_json:
            print(json.dumps(report, indent=2))
            return
        console = Console()
        console.print(
            f"lorakit {report['lorakit']} (plugin API {report['plugin_api']}), Python {report['python']}"
        )
        for p in report["plugins"]:
            state = "" if p["status"] == "ok" else f"  [red]{p['status']}[/]"
            console.print(
                f"  plugin {p['distribution']} {p['version']} (API {p['plugin_api']}){state}"
            )
        for name, v in report["libraries"].items():
            console.print(f"  {name} {v or '[dim]not installed[/]'}")
        if report.get("accelerator"):
            console.print(f"  accelerator: {report['accelerator']}")
        if releases is not None:
            for r in releases:
                if r.error:
                    console.print(f"[yellow]{r.name}[/]: {r.error}")
                elif r.behind:
                    console.print(
                        f"[yellow]{r.name} {r.latest} is out[/] (you have {r.installed}): pip install -U {r.name}"
                    )
                    for line in r.changes:
                        console.print(f"    {line}")
                else:
                    console.print(f"[green]{r.name} {r.installed} is current[/]")
