"""Errors lorakit reports to users.

A :class:`UsageError` (and its subclasses) is something the user can fix: bad config,
bad data, a missing file or plugin. The CLI prints it as one line and exits with 2.
A :class:`RunError` is a run that failed after it started (exit 1). Anything else is a
bug and is shown as one line too; ``LORAKIT_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

from pathlib import Path


class LorakitError(Exception):
    """Base class of the errors lorakit reports without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | Path | None = None) -> None:
        self.message = message
        self.where = str(where) if where is not None else None
        super().__init__(self.format())

    def format(self) -> str:
        """The error as the one line the CLI prints."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        return " ".join(text.split("\n"))


class UsageError(LorakitError):
    """Bad usage, config or data: exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config key is unknown, has the wrong type, or names a missing file."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        file: str | Path | None = None,
        line: int | None = None,
    ) -> None:
        self.key = key
        self.detail = message
        self.file = str(file) if file is not None else None
        self.line = line
        where = None
        if self.file:
            where = f"{self.file}:{line}" if line else self.file
        text = f"{key}: {message}" if key else message
        super().__init__(text, where=where)


class DataError(UsageError):
    """The training data is missing, empty or malformed."""


class PluginError(UsageError):
    """A plugin failed to load or register, or two plugins claim one name."""


class RunError(LorakitError):
    """A training run failed after it started: exit code 1."""

    exit_code = 1
