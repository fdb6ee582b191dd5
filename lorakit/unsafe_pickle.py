"""Unpickling is the person's choice on one command, never a file's.

A pickled checkpoint (``.ckpt``, ``.pt``) runs whatever code it holds when it is loaded.
Whoever types the command may accept that for a file they trust: ``--allow-unsafe-pickle``
on ``train``, ``merge``, ``sample`` or ``export``, or ``LORAKIT_ALLOW_UNSAFE_PICKLE=1`` in that
command's environment. A config file cannot: a key in a YAML someone shared (the old
``sd.allow_unsafe_pickle: true``) is refused (see the sd backend's config). The flag sets the
variable for the command's own processes (an ``accelerate`` launch's workers inherit it);
``lorakit ui`` never passes the flag, so a run started or resumed from the page never unpickles.
"""

from __future__ import annotations

import os

from lorakit.env import env_flag

#: The environment variable that allows unpickling for one command.
ENV = "LORAKIT_ALLOW_UNSAFE_PICKLE"
#: The command-line flag that sets it.
FLAG = "--allow-unsafe-pickle"
#: How a refusal tells the person what to do.
HINT = (
    f"convert it to .safetensors, or pass {FLAG} (or set {ENV}=1) on the command if you "
    "trust the file"
)


def unsafe_pickle_allowed() -> bool:
    """Whether this command was allowed to unpickle (the flag or the variable)."""
    return env_flag(ENV)


def allow_unsafe_pickle(value: bool) -> bool:
    """The flag's callback: when given, allow unpickling in this command's processes."""
    if value:
        os.environ[ENV] = "1"
    return value


def header_line() -> str | None:
    """The run header's line when unpickling is allowed, else None."""
    if not unsafe_pickle_allowed():
        return None
    return (
        f"unpickling allowed on this command ({FLAG} / {ENV}): a .ckpt/.pt base model runs "
        "the code inside it"
    )
