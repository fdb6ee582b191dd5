"""``lorakit selftest``: train, export, reload and resume a tiny model of every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def selftest(
        backend: Annotated[
            list[str] | None, typer.Option("--backend", help="Only these backends.")
        ] = None,
        keep: Annotated[
            Path | None,
            typer.Option(
                "--keep", help="Work in this folder and keep it (default: a temporary one)."
            ),
        ] = None,
    ) -> None:
        """Check this install end to end, offline, in about a minute (exit 1 on a failure)."""
        from rich.console import Console

        from lorakit.diagnostics.selftest import render, run_selftest

        console = Console(highlight=False)
        report = run_selftest(backend, keep=keep, console=console)
        render(report, console)
        if not report.ok:
            raise typer.Exit(1)
