"""One run's files: every file of ``output_dir`` is read and written through a ``RunFolder``.

A run folder may come from someone else (a friend's run to resume, a shared archive), so
nothing in it is trusted:

- Every file is opened relative to the folder's own descriptor with ``O_NOFOLLOW``: no
  symbolic link is followed, inside the folder or at its top (an ``output_dir`` that is a
  link is refused unless ``lorakit train --follow-output-link`` resolves it first).
- Reads open with ``O_NONBLOCK`` and check ``S_ISREG`` on the open descriptor: a FIFO or a
  device is refused without blocking; every read has a size limit.
- Writes go to a temporary file in the same folder (created with the user's umask),
  are fsynced and renamed over the name (``os.replace`` replaces a link, never writes
  through it). Temporary files of a writer that died are removed by the next writer.

The names of a run's files live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lorakit.errors import UsageError
from lorakit.io import disk_error, fsync_fd, remove_stale_temps, temp_name

LOCK = ".lorakit.lock"
CONFIG = "config.yaml"
RECORD = "run.json"
METRICS = "metrics.jsonl"
STATE = "trainer_state.json"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
LOSS_PLOT = "loss.png"
TENSORBOARD = "tensorboard"
CACHE = "cache"
#: The names a run writes at its top, checked before a run writes anything.
TOP_FILES = (LOCK, CONFIG, RECORD, METRICS, LOSS_PLOT)
TOP_FOLDERS = (CHECKPOINTS, SAMPLES, TENSORBOARD, CACHE)

#: Size limits of reads: records (JSON, YAML, the lock), the metrics, anything else.
SMALL = 16 * 2**20
METRICS_LIMIT = 256 * 2**20
LARGE = 64 * 2**30

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RunFolderError(UsageError):
    """A file of a run folder that lorakit refuses (a link, not a regular file, too big)."""


def _parts(rel: str) -> list[str]:
    parts = [p for p in str(rel).replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." or "\0" in p or len(p.encode("utf-8", "replace")) > 255 for p in parts):
        raise RunFolderError(f"{rel!r} is not a name inside a run folder")
    return parts


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


class RunFolder:
    """The files of one folder (a run's ``output_dir``, a checkpoint), never through links."""

    LOCK, CONFIG, RECORD, METRICS, STATE = LOCK, CONFIG, RECORD, METRICS, STATE
    MANIFEST, CHECKPOINTS, SAMPLES, LOSS_PLOT = MANIFEST, CHECKPOINTS, SAMPLES, LOSS_PLOT

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def where(self, rel: str = "") -> Path:
        """The path of ``rel`` for messages."""
        return self.path.joinpath(*_parts(rel)) if rel else self.path

    # -- descriptors -------------------------------------------------------------------------

    def _refuse(self, rel: str, what: str) -> RunFolderError:
        return RunFolderError(
            f"{self.where(rel)} is {what}; lorakit reads and writes only regular files in a "
            "run folder, never through links: remove it"
        )

    def _open_root(self, create: bool) -> int:
        if create:
            with contextlib.suppress(FileExistsError):
                self.path.mkdir(parents=True)
        try:
            return os.open(self.path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        except OSError as exc:
            if os.path.islink(self.path):
                raise RunFolderError(
                    f"output_dir {self.path} is a symbolic link; lorakit does not write through "
                    "links (pass --follow-output-link to use the folder it points to)"
                ) from None
            raise _os_error(self.path, exc) from None

    @contextlib.contextmanager
    def _dir(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder ``parts`` below the top, each step without links."""
        fd = self._open_root(create)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    mode = _lstat_at(fd, part)
                    rel = "/".join(parts[: i + 1])
                    if mode is not None and not stat.S_ISDIR(mode):
                        raise self._refuse(rel, _kind(mode)) from None
                    raise _os_error(self.where(rel), exc) from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def open(self, rel: str, *, limit: int = SMALL) -> IO[bytes]:
        """``rel`` opened for reading: a regular file, reached without links, at most
        ``limit`` bytes (FileNotFoundError when it is not there)."""
        *folders, name = _parts(rel) or [""]
        with self._dir(folders) as dfd:
            try:
                fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                raise
            except OSError as exc:
                mode = _lstat_at(dfd, name)
                if mode is not None and not stat.S_ISREG(mode):
                    raise self._refuse(rel, _kind(mode)) from None
                raise _os_error(self.where(rel), exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._refuse(rel, _kind(info.st_mode))
            if info.st_size > limit:
                raise RunFolderError(
                    f"{self.where(rel)} is too large ({info.st_size} bytes; at most {limit})"
                )
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, rel: str, *, limit: int = SMALL) -> bytes:
        chunks, total = [], 0
        with self.open(rel, limit=limit) as f:
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:  # grew while read
                    raise RunFolderError(f"{self.where(rel)} is too large (over {limit} bytes)")
        return b"".join(chunks)

    def read_text(self, rel: str, *, limit: int = SMALL) -> str:
        return self.read_bytes(rel, limit=limit).decode("utf-8", "replace")

    def read_json(self, rel: str, *, limit: int = SMALL) -> Any:
        """The JSON in ``rel``; a missing, unreadable or malformed file is one line naming it."""
        try:
            data = self.read_bytes(rel, limit=limit)
        except FileNotFoundError:
            raise RunFolderError(f"{self.where(rel)} is missing") from None
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            what = "is empty" if not data.strip() else f"is not valid JSON ({_short(exc)})"
            raise RunFolderError(f"{self.where(rel)} {what}") from None

    def try_json(self, rel: str) -> dict[str, Any] | None:
        """The JSON object in ``rel``, or None for anything else (a missing file included)."""
        try:
            data = self.read_json(rel)
        except (OSError, UsageError):
            return None
        return data if isinstance(data, dict) else None

    def metrics(self, since: int = 0) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl from row ``since`` on (a cut or foreign line ends them;
        no file, no rows)."""
        try:
            text = self.read_text(METRICS, limit=METRICS_LIMIT)
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines()[max(0, since) :]:
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                break
            if not isinstance(row, dict):
                break
            rows.append(row)
        return rows

    def tail(self, rel: str, lines: int = 80, *, window: int = 64_000) -> str:
        """The last ``lines`` lines of ``rel`` (from its last ``window`` bytes), or ""."""
        try:
            with self.open(rel, limit=LARGE) as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - window))
                text = f.read(window).decode("utf-8", "replace")
        except (OSError, UsageError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def lstat(self, rel: str) -> os.stat_result | None:
        """``rel``'s own status (a link is a link), or None when it or a folder above it is
        missing or is not a folder."""
        *folders, name = _parts(rel) or [""]
        try:
            with self._dir(folders) as dfd:
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (OSError, UsageError):
            return None

    def is_file(self, rel: str) -> bool:
        info = self.lstat(rel)
        return info is not None and stat.S_ISREG(info.st_mode)

    def is_dir(self, rel: str) -> bool:
        info = self.lstat(rel)
        return info is not None and stat.S_ISDIR(info.st_mode)

    def entries(self, rel: str = "") -> dict[str, int]:
        """The names in folder ``rel`` and their own modes (empty when it is not a folder)."""
        try:
            with self._dir(_parts(rel)) as dfd:
                return {e: mode for e in os.listdir(dfd) if (mode := _lstat_at(dfd, e)) is not None}
        except (OSError, UsageError):
            return {}

    def files(self, rel: str = "") -> list[str]:
        """Every regular file below ``rel`` (paths relative to the top), links skipped."""
        found: list[str] = []

        def walk(parts: list[str]) -> None:
            try:
                with self._dir(parts) as dfd:
                    entries = sorted(os.listdir(dfd))
                    modes = {e: _lstat_at(dfd, e) for e in entries}
            except (OSError, UsageError):
                return
            for entry in entries:
                mode = modes[entry]
                if mode is None:
                    continue
                if stat.S_ISDIR(mode):
                    walk([*parts, entry])
                elif stat.S_ISREG(mode):
                    found.append("/".join([*parts, entry]))

        walk(_parts(rel))
        return found

    def check(self) -> None:
        """Refuse a run folder whose own files or folders are links or not regular files,
        before anything is written to it."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        with self._dir([]) as dfd:
            for name in (*TOP_FILES, *TOP_FOLDERS):
                mode = _lstat_at(dfd, name)
                want = stat.S_ISDIR if name in TOP_FOLDERS else stat.S_ISREG
                if mode is not None and not want(mode):
                    raise self._refuse(name, _kind(mode))

    # -- writing -----------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` atomically (a link there is replaced, never written through)."""
        *folders, name = _parts(rel)
        where = self.where(rel)
        with self._dir(folders, create=True) as dfd:
            remove_stale_temps(os.listdir(dfd), name, lambda n: os.unlink(n, dir_fd=dfd))
            tmp = temp_name(name, secrets.token_hex(4))
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                    0o666,
                    dir_fd=dfd,
                )
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                fsync_fd(dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise disk_error(where, exc) from exc
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, data: Any, *, indent: int | None = 2) -> None:
        self.write_text(rel, json.dumps(data, indent=indent))

    def update_json(self, rel: str, **fields: Any) -> None:
        """Read the JSON object in ``rel``, update it with ``fields``, replace it."""
        record = self.read_json(rel)
        if not isinstance(record, dict):
            raise RunFolderError(f"{self.where(rel)} is not a JSON object")
        record.update(fields)
        self.write_json(rel, record)

    def open_append(self, rel: str) -> IO[str]:
        """``rel`` opened to append text (created when missing), never through a link."""
        *folders, name = _parts(rel)
        with self._dir(folders, create=True) as dfd:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC
            try:
                fd = os.open(name, flags, 0o666, dir_fd=dfd)
            except OSError as exc:
                mode = _lstat_at(dfd, name)
                if mode is not None and not stat.S_ISREG(mode):
                    raise self._refuse(rel, _kind(mode)) from None
                raise disk_error(self.where(rel), exc) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise self._refuse(rel, _kind(info.st_mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8")

    def open_lock(self, *, create: bool) -> int:
        """The lock file's descriptor (read-write when ``create``): a regular file with one
        name (a hard link to another run's lock is refused as a link is)."""
        flags = (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY
        with self._dir([], create=create) as dfd:
            try:
                fd = os.open(LOCK, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o666, dir_fd=dfd)
            except OSError:
                mode = _lstat_at(dfd, LOCK)
                if mode is not None and not stat.S_ISREG(mode):
                    raise self._refuse(LOCK, _kind(mode)) from None
                raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise self._refuse(LOCK, _kind(info.st_mode) if info.st_nlink == 1 else "a hard link")
        os.set_blocking(fd, True)
        return fd

    def lock_is(self, fd: int) -> bool:
        """Whether the lock file at its name is still the open descriptor ``fd``."""
        info = self.lstat(LOCK)
        return info is not None and os.path.samestat(info, os.fstat(fd))

    def remove(self, rel: str) -> None:
        *folders, name = _parts(rel)
        with contextlib.suppress(OSError, UsageError), self._dir(folders) as dfd:
            os.unlink(name, dir_fd=dfd)


def _lstat_at(dfd: int, name: str) -> int | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
    except OSError:
        return None


def _os_error(path: Path, exc: OSError) -> RunFolderError:
    return RunFolderError(f"{path}: {exc.strerror or exc}")


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def output_dir(path: str | Path, *, follow_link: bool = False) -> Path:
    """The ``output_dir`` a run writes to: a link there is refused (one line) unless
    ``follow_link``, which gives the folder it points to."""
    path = Path(path)
    if path.is_symlink():
        if not follow_link:
            raise RunFolderError(
                f"output_dir {path} is a symbolic link; lorakit does not write through links "
                "(pass --follow-output-link to use the folder it points to)"
            )
        return path.resolve()
    return path
