"""``lorakit train``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lorakit.cli.options import (
    AllowPickleOpt,
    BackendOpt,
    BaseConfigOption,
    ConfigOpt,
    SetOpt,
)
from lorakit.engine.runlock import hold_run_folder, holding_run_folder
from lorakit.unsafe_pickle import header_line

if TYPE_CHECKING:
    from lorakit.engine.trainer import RunResult


def register(app: typer.Typer) -> None:
    @app.command()
    @holding_run_folder
    def train(
        config: ConfigOpt,
        set_: SetOpt = None,
        backend: BackendOpt = None,
        resume: Annotated[
            str | None,
            typer.Option(
                "--resume",
                help="Continue from the newest checkpoint (--resume) or from PATH.",
                metavar="[PATH]",
            ),
        ] = None,
        num_processes: Annotated[
            int, typer.Option("--num-processes", help="Processes (GPUs) to launch with accelerate.")
        ] = 1,
        num_machines: Annotated[int, typer.Option("--num-machines")] = 1,
        machine_rank: Annotated[int, typer.Option("--machine-rank")] = 0,
        main_process_ip: Annotated[str | None, typer.Option("--main-process-ip")] = None,
        main_process_port: Annotated[
            int | None,
            typer.Option(
                "--main-process-port",
                help="Rendezvous port: a free one on one machine, 29500 across machines.",
            ),
        ] = None,
        no_progress: Annotated[
            bool, typer.Option("--no-progress", help="No progress bar.")
        ] = False,
        gpu: Annotated[
            str | None,
            typer.Option("--gpu", help="Check the plan against this card (default: this GPU)."),
        ] = None,
        no_plan_check: Annotated[
            bool,
            typer.Option("--no-plan-check", help="Train even when the plan says it cannot fit."),
        ] = False,
        base_config: BaseConfigOption = None,
        follow_output_link: Annotated[
            bool,
            typer.Option(
                "--follow-output-link",
                help="Write into the folder output_dir links to (refused by default).",
            ),
        ] = False,
        allow_unsafe_pickle: AllowPickleOpt = False,
    ) -> None:
        """Train a LoRA as the config says."""
        from lorakit.config import load_config
        from lorakit.diagnostics.update_check import quiet_notice

        cfg = load_config(config, overrides=set_ or [], backend=backend)
        if base_config:  # short for --set <backend>.base_config=DIR, as on export/merge/sample
            sets = [*(set_ or []), f"{cfg.backend}.base_config={base_config}"]
            cfg = load_config(config, overrides=sets, backend=backend)
        from lorakit.runfolder import output_dir

        out = output_dir(cfg.train.output_dir, follow_link=follow_output_link)
        if out != Path(cfg.train.output_dir):  # --follow-output-link: the folder it names
            cfg.train.output_dir = str(out)
        hold_run_folder(cfg.train.output_dir, machine_rank=machine_rank)  # one writer per run
        for notice in cfg.notices:
            print(f"lorakit: {config}: {notice}", file=sys.stderr)
        pickle_line = header_line()
        if pickle_line and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"lorakit: {pickle_line}", file=sys.stderr)
        if not no_plan_check and "LOCAL_RANK" not in os.environ:
            from lorakit.cli.plan_cmd import train_check

            train_check(cfg, gpu, num_processes * num_machines)
        if num_processes > 1 or num_machines > 1:
            from lorakit.engine.launch import launch

            raise typer.Exit(
                launch(
                    sys.argv[1:],
                    num_processes=num_processes,
                    num_machines=num_machines,
                    machine_rank=machine_rank,
                    main_process_ip=main_process_ip,
                    main_process_port=main_process_port,
                    config=cfg,
                )
            )
        update = quiet_notice() if os.environ.get("LOCAL_RANK", "0") == "0" else None
        if update:
            print(update, file=sys.stderr)

        from lorakit.engine import train as run_training

        result = run_training(cfg, resume=resume, progress=not no_progress)
        report(result)


def report(result: RunResult) -> None:
    """The run's last lines: ``done``, the loss, the outputs; the exit code of a stop."""
    launched = os.environ.get("LORAKIT_LAUNCHED") == "1"
    if result.interrupted:
        # Under lorakit's launcher a rank that stopped cleanly exits 0 (so accelerate
        # does not report a failed worker); the launcher then exits 128 + signal.
        raise typer.Exit(0 if launched else 128 + (result.signal or 2))
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True)  # paths are never wrapped mid-name
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
    if result.eval_loss is not None:
        loss += f", eval loss {result.eval_loss:.4f}"
    console.print(
        f"[green]done[/]: {result.steps} steps, final loss {loss}, "
        f"{result.elapsed_s:.1f} s → {escape(str(result.output_dir))}",
        highlight=False,
    )
    for path in result.outputs:
        console.print(f"  {escape(str(path))}", highlight=False)
