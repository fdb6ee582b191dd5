"""The ``lorakit`` command line. Heavy libraries load inside commands, never here."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any

import click
import typer

from lorakit import __version__
from lorakit.errors import LorakitError

_typer_click: Any
try:  # typer >= 0.2x vendors its own click
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions
_NO_ARGS: Any = getattr(_typer_click, "NoArgsIsHelpError", click.exceptions.UsageError)


def _new_app() -> typer.Typer:
    return typer.Typer(
        name="lorakit",
        help="Train LoRA adapters for Stable Diffusion and causal language models from one YAML file.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode="rich",
    )


#: The root command; built-in and plugin commands are added on first use (build_command).
app = _new_app()


def debug() -> bool:
    from lorakit.env import env_flag

    return env_flag("LORAKIT_DEBUG")


def fail(message: str, code: int) -> None:
    # A rank under lorakit's launcher leaves its error to the launcher, which prints each
    # distinct one once (not once per rank).
    recorded = False
    if os.environ.get("LORAKIT_RANK_ERRORS"):
        from lorakit.engine.rank_errors import record

        recorded = record(message, code)
    if not recorded or debug():
        from lorakit.terminal_text import printable

        # File names and file text in a message are shown as text, on one line.
        print(f"lorakit: error: {printable(message)}", file=sys.stderr)
    raise SystemExit(code)


def _populate(target: typer.Typer) -> None:
    """Add the built-in commands and every plugin's (register_commands) to ``target``."""
    from lorakit.cli import (
        config_cmd,
        demo,
        info_cmds,
        label_cmd,
        model_cmds,
        plan_cmd,
        selftest_cmd,
        train_cmd,
    )

    for module in (
        train_cmd,
        plan_cmd,
        label_cmd,
        config_cmd,
        info_cmds,
        model_cmds,
        demo,
        selftest_cmd,
    ):
        module.register(target)
    try:
        from lorakit.plugins import get_plugins

        get_plugins().add_commands(target)
    except LorakitError:
        if debug():
            raise


def _normalise_argv(argv: list[str]) -> list[str]:
    """``--resume`` with no value means the newest checkpoint."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("latest")
    return out


_built = False


def build_command(*, fresh: bool = False) -> click.Command:
    """The click command tree; ``fresh`` builds a new one with the current plugins."""
    global _built
    target = app
    if fresh:
        target = _new_app()
        _populate(target)
    elif not _built:
        _built = True
        _populate(app)
    command: click.Command = typer.main.get_command(target)  # type: ignore[assignment]
    return command


def main(argv: list[str] | None = None, *, fresh: bool = False) -> Any:
    """Entry point of the ``lorakit`` console script; ``fresh`` builds the command tree
    anew from the current plugins (tests that swap plugins in-process use it)."""
    args = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    # Library deprecation chatter is not for users: stderr is kept for lorakit's own lines.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        command = build_command(fresh=fresh)
        code = command.main(args=args, prog_name="lorakit", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value
            raise SystemExit(code)
        return code
    except (click.exceptions.Exit, typer.Exit) as exc:
        raise SystemExit(exc.exit_code) from None
    except (click.exceptions.Abort, typer.Abort):
        fail("aborted", 130)
    except _NO_ARGS:  # help was shown
        raise SystemExit(2) from None
    except (click.ClickException, _typer_click.ClickException) as exc:
        usage = isinstance(exc, click.UsageError | _typer_click.UsageError)
        where = ""
        ctx = getattr(exc, "ctx", None)
        if usage and ctx is not None:
            where = f" (see: {ctx.command_path} --help)"
        fail(f"{exc.format_message()}{where}", 2 if usage else exc.exit_code)
    except LorakitError as exc:
        if debug():
            traceback.print_exc()
        fail(exc.format(), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except SystemExit:
        raise
    except Exception as exc:
        if debug():
            traceback.print_exc()
        from lorakit.engine.oom import is_oom, message

        if is_oom(exc):
            fail(message(), 1)
        fail(f"{type(exc).__name__}: {exc} (LORAKIT_DEBUG=1 shows the traceback)", 1)
    return None


__all__ = ["app", "main", "__version__"]
