"""``lorakit config init|validate|migrate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lorakit.config.templates import template_text
from lorakit.errors import UsageError

if TYPE_CHECKING:
    from lorakit.config import Config

config_app = typer.Typer(help="Write, check and migrate config files.", no_args_is_help=True)

DISTRIBUTED_SNIPPETS = {
    "ddp": "distributed:\n  strategy: ddp            # one process per GPU: lorakit train --num-processes N\n",
    "zero2": "distributed:\n  strategy: deepspeed_zero2  # shards optimizer state and gradients\n  offload: false\n",
    "zero3": "distributed:\n  strategy: deepspeed_zero3  # also shards the base weights: 70B-class bases\n  offload: false             # true: optimizer state (and weights) in CPU memory\n",
    "fsdp": "distributed:\n  strategy: fsdp\n  offload: false\n",
}


@config_app.command("init")
def init(
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="sd, llm, ...")] = None,
    template: Annotated[
        str | None, typer.Option("--template", "-t", help="e.g. sdxl, qlora")
    ] = None,
    distributed: Annotated[
        str | None, typer.Option("--distributed", help="ddp, zero2, zero3 or fsdp")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented config template."""
    text = template_text(backend, template)
    if distributed:
        if distributed not in DISTRIBUTED_SNIPPETS:
            raise UsageError(f"--distributed: one of {', '.join(DISTRIBUTED_SNIPPETS)}")
        text = text.rstrip("\n") + "\n\n" + DISTRIBUTED_SNIPPETS[distributed]
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists() and not force:
        raise UsageError(f"{output} exists; pass --force to overwrite it")
    from lorakit.io import write_text

    write_text(output, text)
    print(f"wrote {output}")


def load_or_exit(file: Path, overrides: list[str], check_paths: bool) -> Config:
    """The validated config of ``file``, or every error of it, one line each, and exit 2."""
    from lorakit.config import load_config
    from lorakit.config.loader import ConfigErrors

    try:
        return load_config(file, overrides=overrides, check_paths=check_paths)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"lorakit: error: {error.format()}", file=sys.stderr)
        raise SystemExit(2) from None


@config_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="Config file to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key.")] = None,
    no_paths: Annotated[
        bool, typer.Option("--no-paths", help="Don't check that paths exist.")
    ] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the resolved config.")] = False,
) -> None:
    """Check a config without training: keys, types, paths, every plugin name it uses, and
    the base model as training's loader checks it (a GGML file is refused here too).

    Reports every error of the file, one line each, not only the first.
    """
    cfg = load_or_exit(file, set_ or [], not no_paths)
    for notice in cfg.notices:
        print(f"{file}: {notice}", file=sys.stderr)
    if not no_paths:  # what the loader would refuse, said now rather than at train time
        from lorakit.plugins import get_registries

        get_registries().check_model(
            cfg.backend, cfg.train.base_model, cfg.section, cfg.train.model_loader
        )
    if show:
        sys.stdout.write(cfg.to_yaml())
    why = f"; {cfg.chosen_by}" if cfg.chosen_by else ""
    print(f"{file}: ok (backend {cfg.backend}{why}, config hash {cfg.semantic_hash()})")


@config_app.command("migrate")
def migrate_cmd(
    file: Annotated[Path, typer.Argument(help="Config file to bring to the current layout.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print, don't write.")] = False,
) -> None:
    """Rewrite a config in the current layout, listing each change."""
    from lorakit.config import read_yaml
    from lorakit.config.loader import run_backend
    from lorakit.config.migrations import migrate_text
    from lorakit.io import write_text
    from lorakit.plugins import get_registries

    data, _ = read_yaml(file)  # one-line errors for a missing or malformed file
    backend = run_backend(data, get_registries())
    text, notices = migrate_text(file.read_text(encoding="utf-8"), file=str(file), backend=backend)
    for notice in notices:
        print(f"{file}: {notice}")
    if text is None:
        load_or_exit(file, [], check_paths=False)  # "current" only for a file that validates
        print(f"{file}: already current")
        return
    if dry_run:
        sys.stdout.write(text)
        return
    backup = file.with_name(file.name + ".bak")
    write_text(backup, file.read_text(encoding="utf-8"))
    write_text(file, text)
    print(f"wrote {file} (previous version in {backup})")


@config_app.command("reference")
def reference_cmd() -> None:
    """Print the config reference (every key, type, default) as Markdown."""
    from lorakit.config.reference import reference

    sys.stdout.write(reference())


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
