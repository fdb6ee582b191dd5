"""The ``lorakit ui`` command, registered through ``register_commands`` (imports nothing heavy)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lorakit.api import UsageError, hookimpl


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@hookimpl
def register_commands(app: Any) -> None:
    @app.command()
    def ui(
        port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
        runs_dir: Annotated[
            Path, typer.Option("--runs-dir", help="Folder of runs (one output_dir each).")
        ] = Path("./output"),
        host: Annotated[
            str,
            typer.Option(
                "--host",
                help="Address to bind; a non-loopback one prints a warning (every address needs the printed URL's token).",
            ),
        ] = "127.0.0.1",
        allow_host: Annotated[
            list[str] | None,
            typer.Option(
                "--allow-host",
                help="Another Host name the page answers to (a reverse proxy's); repeatable.",
            ),
        ] = None,
        parallel: Annotated[
            bool,
            typer.Option("--parallel", help="Allow several trainings at once (default: one)."),
        ] = False,
        folder: Annotated[
            list[Path] | None,
            typer.Option(
                "--folder",
                help="A folder the page's file browser shows, besides your home and the runs "
                "folder's parent; repeatable.",
            ),
        ] = None,
    ) -> None:
        """Serve a local web page to set up, run and watch trainings."""
        if not 0 < port < 65536:
            raise UsageError(f"--port: {port} is not a port number")
        if not is_loopback(host):
            print(
                f"lorakit: warning: serving on {host}, reachable from other machines; "
                "anyone with the URL below can start trainings on this machine",
                file=sys.stderr,
            )
        from lorakit_ui.server import serve

        serve(
            runs_dir,
            host=host,
            port=port,
            allow_hosts=tuple(allow_host or ()),
            parallel=parallel,
            folders=tuple(folder or ()),
        )
