"""What a backend does for the core's verbs: the typed contract behind ``BackendSpec.commands``.

``lorakit export``, ``merge``, ``sample``, ``demo`` and ``selftest`` parse their options in
the core and hand the work to the backend that reads the files (or that ``--backend``
names). A backend states what it does for them by subclassing :class:`BackendCommands` and
overriding the verbs it supports; ``BackendSpec(commands=MyCommands())`` registers it. A
verb it does not override is reported as unsupported (``backend X does not support
'merge'``). The methods import their heavy modules when called, so registering costs
nothing. Every verb is documented in docs/plugin-hooks.md (a test enforces it).

Commands a backend adds beyond these (``lorakit chat``) go through the ``register_commands``
hook instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lorakit.errors import UsageError

if TYPE_CHECKING:
    from lorakit.config.schema import Config

#: A LoRA to apply and its weight, as ``--lora PATH[:WEIGHT]`` gives it.
WeightedLora = tuple[str, float]


class BackendCommands(Protocol):
    """The core verbs a backend serves; subclass it and override those it supports."""

    def export(
        self, source: Path, to: str, output: Path | None, base: str | None, config: Config | None
    ) -> list[Path]:
        """``lorakit export``: convert the LoRA ``source`` to format ``to``; the files written.
        ``config`` carries the backend's settings (``--config``, ``--set``, ``--base-config``)
        or is None."""
        raise _unsupported(self, "export")

    def merge(
        self,
        base: str,
        loras: list[WeightedLora],
        output: Path,
        dtype: str | None,
        config: Config | None,
    ) -> Path:
        """``lorakit merge``: bake ``loras`` into ``base`` and save it at ``output`` in ``dtype``
        (float32, float16 or bfloat16; None: the base's own); ``config`` as for ``export``.
        The path written."""
        raise _unsupported(self, "merge")

    def sample(
        self,
        base: str,
        loras: list[WeightedLora],
        prompts: list[str],
        output: Path,
        seed: int,
        steps: int | None,
        config: Config | None,
        width: int | None,
        height: int | None,
    ) -> list[Path]:
        """``lorakit sample``: one preview (image or text) per prompt with ``loras`` applied,
        written in the folder ``output``; ``config`` is the run's when ``--config`` was given;
        ``width``/``height`` (images) None: the LoRA's training resolution. The files written."""
        raise _unsupported(self, "sample")

    def demo(self, folder: Path) -> Path:
        """``lorakit demo`` / ``lorakit selftest``: build a tiny stand-in base model, data and a
        config in ``folder``; the config's path."""
        raise _unsupported(self, "demo")

    def demo_score(self, config_path: Path, run_dir: Path | None) -> str:
        """``lorakit demo``: a short measure of what the run learned, for the summary's
        before → after column; ``run_dir`` None asks the base model (before training)."""
        raise _unsupported(self, "demo_score")

    def selftest(self, output_dir: Path, config: Config) -> str:
        """``lorakit selftest``: reload a finished run's exported files with the real client
        and raise when they do not reproduce the trained model; one line saying what matched."""
        raise _unsupported(self, "selftest")


#: The verbs of :class:`BackendCommands`.
VERBS = ("export", "merge", "sample", "demo", "demo_score", "selftest")


def supports(commands: BackendCommands | None, verb: str) -> bool:
    """Whether ``commands`` overrides ``verb`` (a name in :data:`VERBS`)."""
    if commands is None or verb not in VERBS:
        return False
    return getattr(type(commands), verb, None) is not getattr(BackendCommands, verb)


def _unsupported(commands: object, verb: str) -> UsageError:
    return UsageError(f"{type(commands).__name__} does not support '{verb}'")
