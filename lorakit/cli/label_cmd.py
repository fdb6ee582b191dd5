"""``lorakit label``: caption a folder of images into ``metadata.csv``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lorakit.errors import UsageError
from lorakit.terminal_text import printable


def _say(message: str) -> None:
    print(f"lorakit: {printable(message)}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    @app.command()
    def label(
        data_dir: Annotated[Path, typer.Argument(help="Folder of images to label.")],
        labeler: Annotated[
            str | None,
            typer.Option("--labeler", "-l", help="Labeler to use (lorakit plugins lists them)."),
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option(
                "--option", "-o", help="A labeler option: --option top_k=5.", metavar="KEY=VALUE"
            ),
        ] = None,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace an existing metadata.csv.")
        ] = False,
        append: Annotated[
            bool,
            typer.Option("--append", help="Keep metadata.csv; label only images it does not list."),
        ] = False,
        prefix: Annotated[
            str | None,
            typer.Option("--prefix", help="Put this (a trigger word) before every caption."),
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option("--dry-run", help="Print the table it would write; write nothing."),
        ] = False,
        recursive: Annotated[
            bool,
            typer.Option("--recursive", help="Also label images in subfolders (as sub/name.png)."),
        ] = False,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", min=1, help="Images per labeler call.")
        ] = None,
        no_progress: Annotated[
            bool, typer.Option("--no-progress", help="No progress bar.")
        ] = False,
    ) -> None:
        """Caption or tag the images of DATA_DIR and write DATA_DIR/metadata.csv."""
        from lorakit import labeling
        from lorakit.plugins import get_registries

        registries = get_registries()
        if labeler is None:
            known = ", ".join(registries.labelers.names()) or "none installed"
            raise UsageError(f"choose a labeler with --labeler NAME (available: {known})")
        if overwrite and append:
            raise UsageError("--overwrite and --append exclude each other: pick one")
        mode: labeling.Mode = "overwrite" if overwrite else "append" if append else "new"
        instance = labeling.create_labeler(
            labeler, labeling.parse_options(option or []), registries
        )
        report = labeling.label_folder(
            data_dir,
            instance,
            mode=mode,
            prefix=prefix,
            dry_run=dry_run,
            batch_size=batch_size,
            recursive=recursive,
            progress=not no_progress,
            name=labeler,
        )
        say_report(report, data_dir, labeler, dry_run)


def say_report(report: Any, data_dir: Path, labeler: str, dry_run: bool) -> None:
    """What ``label`` did: skipped and empty images, the table written (or not)."""
    for file_name, reason in report.unreadable:
        _say(f"skipped {data_dir / file_name}: cannot read it ({reason})")
    if report.empty:
        shown = ", ".join(report.empty[:5]) + (", ..." if len(report.empty) > 5 else "")
        _say(
            f"{len(report.empty)} image(s) got an empty caption from {labeler}: {shown} "
            "(training refuses empty captions: pass --prefix or edit the table)"
        )
    if dry_run:
        sys.stdout.write(printable(report.csv_text, newlines=True))
        _say(
            f"dry run: would write {len(report.rows)} rows ({len(report.labeled)} new) "
            f"to {report.metadata_path}; nothing written"
        )
    elif not report.labeled:
        _say(f"nothing to label: {report.metadata_path} lists all {report.found} images")
    else:
        kept = f", {report.kept} kept" if report.kept else ""
        skipped = f", {len(report.unreadable)} unreadable" if report.unreadable else ""
        print(f"wrote {report.metadata_path}: {len(report.labeled)} labeled{kept}{skipped}")
