"""``lorakit demo``: train a real LoRA of every installed kind, offline, in minutes.

Each backend whose commands support ``demo`` (:class:`lorakit.backend_plugin.BackendPlugin`) builds a
small stand-in base model (random weights: it shows the machinery, not the quality), a
small dataset and a config from its shipped template, in a folder it is given, and returns
the config's path. The core trains each through the same engine ``lorakit train`` uses and
prints where everything is. A backend that also supports ``demo_score(config_path,
run_dir_or_None) -> str`` gets a "before → after" column (e.g. answers it gets right).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

NEXT_STEPS = {
    "sd": "lorakit config init --backend sd -o mine.yaml   # set base_model to e.g. "
    "./models/v1-5-pruned.safetensors, train_data_dir to your images; then lorakit label, lorakit train",
    "llm": "lorakit config init --backend llm -o mine.yaml  # set base_model to e.g. "
    "meta-llama/Llama-2-7b-hf, train_data_dir to your JSONL; then lorakit train",
}


@dataclass
class DemoRun:
    backend: str
    config: Path
    output_dir: Path
    steps: int
    final_loss: float | None
    first_loss: float | None
    seconds: float
    outputs: list[Path]
    score: str = ""


def run_demo(
    output: Path, backends: list[str] | None = None, console: Console | None = None
) -> list[DemoRun]:
    from lorakit.builtins.trackers import read_metrics
    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import get_plugins

    console = console or Console()
    plugins = get_plugins()
    plugins.check()
    available = plugins.registries.backends_with("demo", backends, what="demo")
    runs = []
    for name in available:
        start = time.perf_counter()
        folder = output / name
        console.rule(f"[bold]{name}: building a stand-in base model and data")
        commands = available[name]
        config_path = commands.demo(folder)
        console.print(f"config: {config_path}")
        config = load_config(config_path)
        run_dir = Path(config.train.output_dir)
        if run_dir.is_relative_to(folder) and run_dir.exists():
            shutil.rmtree(run_dir)  # an earlier demo's run: the demo starts afresh
        score = commands.demo_score if commands.supports("demo_score") else None
        before = score(config_path, None) if score else ""
        console.rule(f"[bold]{name}: training")
        result = train(config)
        rows = read_metrics(result.output_dir)
        after = score(config_path, result.output_dir) if score else ""
        runs.append(
            DemoRun(
                name,
                config_path,
                result.output_dir,
                result.steps,
                result.final_loss,
                rows[0]["loss"] if rows else None,
                time.perf_counter() - start,
                result.outputs,
                f"{before} → {after}" if score else "",
            )
        )
    summary(runs, console)
    return runs


def summary(runs: list[DemoRun], console: Console) -> None:
    table = Table(title="lorakit demo")
    scored = any(run.score for run in runs)
    for column in ("backend", "steps", "loss first → last"):
        table.add_column(column, no_wrap=True)
    if scored:
        table.add_column("before → after", min_width=14)
    table.add_column("time", no_wrap=True)
    for run in runs:
        loss = (
            f"{run.first_loss:.4f} → {run.final_loss:.4f}"
            if run.final_loss is not None and run.first_loss is not None
            else "-"
        )
        score = (run.score or "-",) if scored else ()
        table.add_row(run.backend, str(run.steps), loss, *score, f"{run.seconds:.0f} s")
    console.print(table)
    for run in runs:
        console.print(f"[bold]{run.backend}[/] wrote:")
        for path in [*run.outputs, run.output_dir / "loss.png"]:
            console.print(f"  {escape(str(path))}", soft_wrap=True, highlight=False)
    console.print(
        "The base models are random stand-ins built on this machine; with a real base model:"
    )
    for run in runs:
        if run.backend in NEXT_STEPS:
            console.print(f"  {NEXT_STEPS[run.backend]}")


def register(app: Any) -> None:
    import typer

    @app.command()
    def demo(
        output: Path = typer.Option(
            Path("demo-output"), "--output", "-o", help="Where the demo writes."
        ),
        backend: list[str] | None = typer.Option(None, "--backend", help="Only these backends."),
    ) -> None:
        """Train an image LoRA and a text LoRA offline on stand-in models, end to end."""
        run_demo(output, backend)
