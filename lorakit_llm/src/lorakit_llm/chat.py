"""``lorakit chat``: one base model, several named adapters, switched or combined.

::

    lorakit chat --base ./llama --adapter radiology=./out/radiology --adapter ./out/cardio:0.8
    lorakit chat --base ./llama --adapter A --adapter B --combine --prompt "..."

Without ``--prompt`` it is a REPL: ``/use NAME`` switches adapter, ``/combine`` uses the
weighted combination of all, ``/base`` turns adapters off, ``/adapters`` lists them,
``/reset`` forgets the conversation, ``/quit`` leaves. Only typer is imported here.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

HELP = "/use NAME · /combine · /base · /adapters · /reset · /quit"


def register(app: typer.Typer) -> None:
    @app.command()
    def chat(
        base: Annotated[str, typer.Option("--base", help="Base model: folder, hub id or .gguf.")],
        adapter: Annotated[
            list[str] | None,
            typer.Option("--adapter", "--lora", help="[NAME=]PATH[:WEIGHT]; repeatable."),
        ] = None,
        prompt: Annotated[
            str | None, typer.Option("--prompt", "-p", help="Answer this once and exit.")
        ] = None,
        use: Annotated[str | None, typer.Option("--use", help="Adapter to start with.")] = None,
        combine: Annotated[
            bool, typer.Option("--combine", help="Start with the weighted combination of all.")
        ] = False,
        system: Annotated[str | None, typer.Option("--system", help="System message.")] = None,
        chat_template: Annotated[
            str | None, typer.Option("--chat-template", help="Template name, Jinja or file.")
        ] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 256,
        dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16.")] = "auto",
    ) -> None:
        """Talk to a base model with one or several LoRA adapters (switch or combine)."""
        from lorakit.api import parse_lora, printable
        from lorakit_llm.chat_session import ChatSession

        session = ChatSession.open(
            base,
            [parse_lora(a) for a in adapter or []],
            dtype=dtype,
            chat_template=chat_template,
            system=system,
            max_new_tokens=max_new_tokens,
        )
        if combine:
            session.combine()
        elif use:
            session.use(use)
        if prompt is not None:
            print(printable(session.ask(prompt), newlines=True))
            return
        _repl(session)


def _repl(session: Any) -> None:
    from lorakit.api import UsageError, printable

    print(f"lorakit chat · {session.describe()} · {HELP}")
    while True:
        try:
            line = input(f"[{session.active}] > ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line[1:].partition(" ")
            try:
                if command in ("quit", "exit", "q"):
                    return
                if command == "use":
                    session.use(arg.strip())
                elif command == "combine":
                    session.combine()
                elif command == "base":
                    session.use_base()
                elif command == "adapters":
                    print(session.describe())
                elif command == "reset":
                    session.reset()
                else:
                    print(HELP)
            except UsageError as exc:
                print(f"error: {printable(exc.message)}")
            continue
        print(printable(session.ask(line), newlines=True))
