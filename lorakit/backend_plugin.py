"""A model backend as a plugin registers it: one object that says what it is and does.

A backend plugin (``sd``, ``llm``, a third party's ``audio``) subclasses :class:`BackendPlugin`,
sets its class attributes and overrides the methods it supports, and registers one instance::

    @hookimpl
    def register_backends(register):
        register(AudioBackend())

The methods import their heavy modules when called, so registering costs nothing and
``lorakit --help`` stays torch-free. A verb it does not override is reported as unsupported
(``backend audio does not support 'merge'``). Every method is documented in
docs/plugin-hooks.md (a test enforces it).

Commands a backend adds beyond these (``lorakit chat``) go through the ``register_commands``
hook instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from lorakit.errors import UsageError

if TYPE_CHECKING:
    from lorakit.backend import Backend
    from lorakit.config.schema import Config
    from lorakit.data_report import DataReport
    from lorakit.identify import FileKind, FileProbe
    from lorakit.planning.estimate import PlanModel

#: A LoRA to apply and its weight, as ``--lora PATH[:WEIGHT]`` gives it.
WeightedLora = tuple[str, float]


class Chat(Protocol):
    """A conversation with a base model and its adapters (``lorakit chat``, the page's chat
    panel): ``active`` is the adapter answering (``"base"``: adapters off), ``history`` the
    turns so far (``{"role", "content"}``), ``max_new_tokens`` the longest answer."""

    active: str
    history: list[dict[str, str]]
    max_new_tokens: int

    def use(self, name: str) -> None:
        """Answer with adapter ``name`` from now on (``"base"``: the base model alone)."""

    def ask(self, prompt: str) -> str:
        """The answer to ``prompt`` after ``history``, which it then extends."""


class BackendPlugin:
    """One model backend: its name, config section and templates, and what it does.

    ``name`` is the backend's name and the key of its config section (``sd:``, ``llm:``),
    validated by ``config_model`` (a pydantic model). ``task_types`` are the ``task_type``
    values it serves (the first is its own). ``templates`` maps template names to
    ``(package, file)`` of commented config templates shipped as package data; the first is
    the default of ``lorakit config init``. ``aliases`` maps top-level keys the backend
    accepts (``metadata_path``) to the key of its section they stand for; ``migrations``
    maps an old layout version N to the top-level keys that moved into the backend's section
    between N and N+1 (old name → new name).
    """

    name: ClassVar[str]
    task_types: ClassVar[tuple[str, ...]]
    description: ClassVar[str] = ""
    config_model: ClassVar[type | None] = None
    templates: ClassVar[Mapping[str, tuple[str, str]]] = {}
    aliases: ClassVar[Mapping[str, str]] = {}
    migrations: ClassVar[Mapping[int, Mapping[str, str]]] = {}

    def template_files(self) -> Mapping[str, tuple[str, str]]:
        """``lorakit config init``: the config templates offered, ``name -> (package, file)``
        (the first is the default). By default :attr:`templates`; a backend whose templates
        come from other plugins (lorakit-sd's model families) lists them here."""
        return self.templates

    def create(self, config: Config) -> Backend:
        """``lorakit train``: the :class:`lorakit.backend.Backend` that trains ``config``."""
        raise _unsupported(self, "create")

    def reads_model(self, base_model: str) -> str | None:
        """Whether this backend reads ``base_model`` (as written in a config), judged cheaply
        from local files only (a suffix, a folder listing, a file's header; never the weights,
        never the network): a few words saying what it is (``a single-file SD1.x checkpoint``), or None.
        With several backends installed and no ``task_type``, the backend that claims the
        config's model (else its data) runs it."""
        return None

    def reads_data(self, train_data_dir: str) -> str | None:
        """Whether this backend reads the training data at ``train_data_dir``, judged as
        cheaply as :meth:`reads_model`: a few words saying what it is (``images with
        metadata.csv``), or None."""
        return None

    def detect(self, path: Path) -> bool:
        """Whether the LoRA file or folder ``path`` belongs to this backend (``lorakit
        export``, ``merge`` and ``sample`` pick the backend with it), from headers only."""
        return False

    def identify(self, probe: FileProbe) -> FileKind | None:
        """``lorakit inspect``: what a file or folder is (a :class:`lorakit.identify.FileKind`)
        when it is one of this backend's own, else None (:mod:`lorakit.identify`)."""
        return None

    def plan(self, config: Config) -> PlanModel:
        """``lorakit plan``: the model on the meta device and a fake batch
        (:class:`lorakit.planning.PlanModel`) for ``config`` (docs/will-it-fit.md)."""
        raise _unsupported(self, "plan")

    def inspect_data(self, config: Config, limit: int) -> DataReport:
        """``lorakit ui``'s dataset view: the training data of ``config`` as a run reads it
        (at most ``limit`` rows; :class:`lorakit.api.DataReport`), with warnings."""
        raise _unsupported(self, "inspect_data")

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

    def chat(
        self,
        base: str,
        loras: list[WeightedLora],
        dtype: str,
        chat_template: str | None,
        system: str | None,
        max_new_tokens: int,
    ) -> Chat:
        """``lorakit chat`` and the page's chat panel: ``base`` with ``loras`` loaded (the
        first one answering), each prompted as it was trained unless ``chat_template`` or
        ``system`` say otherwise; ``dtype`` ``auto``, ``float32``, ``bfloat16``."""
        raise _unsupported(self, "chat")

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

    def supports(self, verb: str) -> bool:
        """Whether this backend overrides the method ``verb`` (a name in :data:`VERBS`, or
        ``detect``, ``identify``, ``reads_model``, ``reads_data``)."""
        if verb == "supports" or not callable(getattr(BackendPlugin, verb, None)):
            return False
        return getattr(type(self), verb, None) is not getattr(BackendPlugin, verb)


#: The methods of :class:`BackendPlugin` a backend may leave unsupported.
VERBS = (
    "create",
    "plan",
    "inspect_data",
    "export",
    "merge",
    "sample",
    "chat",
    "demo",
    "demo_score",
    "selftest",
)


def _unsupported(backend: BackendPlugin, verb: str) -> UsageError:
    return UsageError(f"backend {backend.name} does not support '{verb}'")
