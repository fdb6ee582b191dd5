"""Helpers for testing lorakit plugins (lorakit's own packages use them too).

Nothing here is imported by lorakit at run time.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (the previous count is restored).

    Tiny test models gain nothing from several threads, and on a busy machine two spinning
    threads per process are several times slower than one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def restore_installed(package: str) -> None:
    """Undo pytest's shadowing of an installed plugin package by its project folder.

    With ``--import-mode=importlib``, pytest imports ``lorakit_sd/tests/conftest.py`` as
    ``lorakit_sd.tests.conftest`` and registers the project folder ``lorakit_sd/`` (no
    ``__init__.py``) as the module ``lorakit_sd``, hiding the installed package. Call this
    at the top of such a conftest to put the real package back.
    """
    if getattr(sys.modules.get(package), "__file__", None) is None:
        sys.modules.pop(package, None)
        importlib.import_module(package)


def run_cli(capsys: Any, *args: object) -> tuple[int, str, str]:
    """Run ``lorakit ARGS`` in-process under pytest's ``capsys``: (exit code, stdout, stderr).

    The command tree is built from the plugins current now (``set_plugins``), so a command a
    test's plugin adds is there, whatever ran before in the process.
    """
    from lorakit.cli import main

    try:
        code = int(main([str(a) for a in args], fresh=True) or 0)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def write_config(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as a YAML config at ``path`` (keys in the order given) and return it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_capped(
    args: list[object],
    *,
    memory_gb: float = 3.0,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    module: str = "lorakit.cli",
) -> Any:
    """``python -m lorakit.cli ARGS`` (or another ``module``) in a subprocess whose address
    space is capped at ``memory_gb`` (``RLIMIT_AS``) and whose run is cut at ``timeout``
    seconds: a file that asks for unbounded work fails the test, not the machine.

    Returns the ``subprocess.CompletedProcess`` (text ``stdout`` and ``stderr``); a run
    past ``timeout`` raises ``subprocess.TimeoutExpired`` (the child is killed).
    """
    import os
    import resource
    import subprocess

    limit = int(memory_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", module, *(str(a) for a in args)],
        preexec_fn=cap,  # noqa: PLW1509 - only sets a limit, before exec
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
