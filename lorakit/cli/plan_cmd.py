"""``lorakit plan``: will this run fit the card, and what to change when it does not."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lorakit.cli.options import BackendOpt, ConfigOpt, SetOpt

GpuOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu",
        help='The card to plan for: a size ("24GB") or a name ("RTX 4090", "H100"). '
        "Default: this machine's GPU, if it has one.",
    ),
]


def render(plan: Any, console: Any) -> None:
    """The text form of a plan: what holds the memory, the steps, the verdict, the ladder."""
    from rich.markup import escape
    from rich.table import Table

    from lorakit.planning.plan import gib

    e, m = plan.estimate, plan.model
    console.print(f"[bold]{escape(plan.backend)}[/]: {escape(m.description)}")
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("memory (peak of one step)")
    table.add_column("size", justify="right")
    table.add_row("frozen weights", gib(e.frozen))
    table.add_row(f"LoRA parameters ({e.trainable_params:,})", gib(e.lora))
    table.add_row("LoRA gradients (alive at the peak)", gib(e.grads))
    table.add_row(f"optimizer state ({escape(plan.optimizer)})", gib(e.optimizer))
    gc = "on" if e.checkpointing else "off"
    table.add_row(f"activations (gradient checkpointing {gc})", gib(e.activations))
    if e.other_activations is not None:
        other = "off" if e.checkpointing else "on"
        table.add_row(
            f"[dim]activations with gradient checkpointing {other}[/]",
            f"[dim]{gib(e.other_activations)}[/]",
        )
    for name, size in m.caches.items() or {"caches": 0}.items():
        table.add_row(f"caches ({escape(name)})" if name != "caches" else "caches", gib(size))
    table.add_row("[bold]total[/]", f"[bold]{gib(e.total)}[/]")
    console.print(table)
    per = f"{escape(m.per_step)} per micro-batch × {plan.accumulation} accumulation"
    steps = f"{plan.steps:,} optimizer steps" if plan.steps else "steps unknown (data not found)"
    console.print(f"{steps}; {per}")
    if m.caveat:
        console.print(f"[yellow]{escape(m.caveat)}[/]")
    if plan.card is None:
        console.print("[dim]no card to compare with: pass --gpu 24GB (or a card name)[/]")
        return
    if plan.fits:
        console.print(
            f"[green]fits[/] {escape(str(plan.card))}: {gib(e.total)} of {gib(plan.card.usable_bytes)} usable"
        )
        return
    console.print(
        f"[red]does not fit[/] {escape(str(plan.card))}: {gib(e.total)} needed, "
        f"{gib(plan.card.usable_bytes)} usable"
    )
    if not plan.ladder:
        console.print("nothing on the ladder fits this card; a larger card is needed")
        return
    ladder = Table(title="configs that fit, cheapest loss of quality first", show_lines=False)
    ladder.add_column("#", justify="right")
    ladder.add_column("peak", justify="right")
    ladder.add_column("what it costs")
    ladder.add_column("flags", overflow="fold")
    for i, row in enumerate(plan.ladder, 1):
        ladder.add_row(
            str(i), gib(row.estimate.total), escape(row.cost or "-"), escape(row.flags())
        )
    console.print(ladder)


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        config: ConfigOpt,
        gpu: GpuOpt = None,
        set_: SetOpt = None,
        backend: BackendOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Peak GPU memory of a run, from its config alone (no weights, no GPU needed)."""
        from rich.console import Console

        from lorakit.config import load_config
        from lorakit.planning import local_card, make_plan, parse_gpu

        card = parse_gpu(gpu) if gpu else None
        cfg = load_config(Path(config), overrides=set_ or [], backend=backend)
        for notice in cfg.notices:
            print(f"lorakit: {config}: {notice}", file=sys.stderr)
        if card is None:
            card = local_card()
        result = make_plan(cfg, card)
        if as_json:
            print(json.dumps(result.as_dict(), indent=2))
            return
        render(result, Console(highlight=False))


def train_check(config: Any, gpu: str | None, processes: int = 1) -> None:
    """``lorakit train``'s plan check: print the plan's line, refuse a run that cannot fit.

    The card is ``--gpu`` or this machine's GPU; on a machine without one (and no
    ``--gpu``) there is nothing to check against. A plan that cannot be made (a config
    only the loader understands, a plugin backend without a planner) never stops a run:
    its reason is printed instead. The plan is per process without sharding: a run that
    shards its weights over several processes (DeepSpeed ZeRO-3, FSDP) is never refused,
    nor is a run whose plan is only a worst case (its line says why: ``PlanModel.caveat``).
    """
    from lorakit.errors import UsageError
    from lorakit.planning import local_card, make_plan, parse_gpu
    from lorakit.planning.plan import gib

    card = parse_gpu(gpu) if gpu else local_card()
    if card is None:
        return
    sharded = processes > 1 and config.train.distributed.strategy in ("deepspeed_zero3", "fsdp")
    try:
        plan = make_plan(config, card, both=False, ladder=False)
        refused = not (plan.fits or plan.model.caveat)
        if refused and not sharded:  # the ladder is traced only for the refusal's advice
            plan = make_plan(config, card, both=False)
    except Exception as exc:  # noqa: BLE001 - a missing estimate never blocks training
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"plan: skipped ({text})", file=sys.stderr)
        return
    print(plan.summary() + (" (per process, before sharding)" if sharded else ""))
    if plan.fits or sharded or plan.model.caveat:
        return
    first = (
        f"first config that fits: {plan.ladder[0].flags()}"
        if plan.ladder
        else "nothing on the ladder fits it"
    )
    raise UsageError(
        f"this run needs ≈ {gib(plan.estimate.total)} and {plan.card} has "
        f"{gib(card.usable_bytes)} usable; {first} (lorakit plan shows why; "
        f"--no-plan-check runs it anyway)"
    )
