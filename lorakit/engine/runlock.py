"""One writer per run folder: an exclusive lock on ``output_dir/.lorakit.lock``.

``lorakit train`` holds it for the whole run. In a multi-process launch only the process
that starts the run holds it (lorakit's launcher, or global rank 0 of a hand-made
``accelerate launch`` / ``torchrun``); the ranks a launcher started leave it alone. The lock
is the operating system's (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), so a
process that dies for any reason, SIGKILL included, releases it, and the next run takes over
the file it left. The file holds the holder's PID, start time and command (as a JSON list of
arguments: data, never text a shell reads), for the one line a second writer gets and for
``lorakit ui``, which reads it to show (and stop) a training it did not start. The file is
opened through :class:`lorakit.runfolder.RunFolder`: never through a link, never a FIFO.

This module imports nothing heavy: the web page and plugins use it through ``lorakit.api``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import UsageError
from lorakit.runfolder import CHECKPOINTS, LOCK, RECORD, STATE, RunFolder

#: The lock file's name inside ``output_dir``.
LOCK_NAME = LOCK


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder: the process id, when it took the lock, its command line."""

    pid: int
    started_at: float
    command: tuple[str, ...] = ()

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"PID {self.pid}, since {when}"


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _parse(data: bytes) -> Holder | None:
    try:
        record = json.loads(data)
        command = record.get("command", [])
        args = tuple(str(a) for a in command) if isinstance(command, list) else ()
        return Holder(int(record["pid"]), float(record["started_at"]), args)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _read_fd(fd: int) -> Holder | None:
    try:
        return _parse(os.pread(fd, 65536, 0))
    except OSError:
        return None


def _read(output_dir: Path) -> Holder | None:
    try:
        return _parse(RunFolder(output_dir).read_bytes(LOCK, limit=65536))
    except (OSError, UsageError):
        return None


def holder(output_dir: str | Path) -> Holder | None:
    """The live process that holds ``output_dir``, or None when no one trains there.

    The answer comes from the lock itself (a probe that takes and drops it), not from the
    PID in the file: a file left by a dead process reads as free.
    """
    try:
        fd = RunFolder(output_dir).open_lock(create=False)
    except (OSError, UsageError):
        return None  # none, or one lorakit would not take (a link, a FIFO): no holder
    try:
        if _try_lock(fd):
            return None  # free (closing the descriptor drops the probe's lock)
        return _read_fd(fd) or Holder(0, 0.0)
    finally:
        os.close(fd)


def holds(pid: int, output_dir: str | Path) -> bool:
    """Whether process ``pid`` is a lorakit process that has ``output_dir``'s lock file open
    (what ``lorakit ui`` checks before it signals a run it did not start)."""
    import psutil

    try:
        fd = RunFolder(output_dir).open_lock(create=False)
    except (OSError, UsageError):
        return False
    try:
        lock = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        proc = psutil.Process(pid)
        if not any("lorakit" in part for part in proc.cmdline()):
            return False
        paths = [f.path for f in proc.open_files()]
    except psutil.Error:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    if fd_dir.is_dir():  # the open descriptors themselves, whatever their names now
        with contextlib.suppress(OSError):
            paths = [str(p) for p in fd_dir.iterdir()]
    for path in paths:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(path), lock):
                return True
    return False


def in_use(output_dir: str | Path, found: Holder | None) -> UsageError:
    """The one line a second writer of ``output_dir`` gets."""
    who = found.describe() if found and found.pid else "another process"
    return UsageError(
        f"output_dir {output_dir} is in use by another training ({who}); "
        "stop it first or choose another output_dir"
    )


class RunLock:
    """The lock of one run folder, held by this process until :meth:`release`."""

    def __init__(self, output_dir: str | Path) -> None:
        self.out = Path(output_dir)
        self.folder = RunFolder(self.out)
        self.path = self.out / LOCK_NAME
        self.created = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``UsageError`` naming the process that holds it."""
        self.created = not self.out.exists() and not self.out.is_symlink()
        self.folder.check()  # links or FIFOs among the run's files: refused before writing
        try:
            fd = self._lock_file()
        except OSError as exc:
            raise UsageError(f"output_dir {self.out}: cannot write here ({exc.strerror})") from None
        if fd is None:
            if self.created:
                shutil.rmtree(self.out, ignore_errors=True)
            raise in_use(self.out, _read(self.out))
        # A stale file of a dead process is simply overwritten: the lock was free. The
        # command is data (a JSON list), never a line a shell would read.
        record = {"pid": os.getpid(), "started_at": time.time(), "command": list(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def _lock_file(self) -> int | None:
        """The locked, open lock file, or None when a live process holds it.

        A few tries a little apart: ``holder`` probes take the lock for an instant. After
        locking, the file must still be the one at the path (a holder that was releasing may
        have removed it meanwhile; then the new file is locked instead).
        """
        for attempt in range(5):
            # never truncated before locking: another process's PID stays readable
            fd = self.folder.open_lock(create=True)
            if _try_lock(fd) and self.folder.lock_is(fd):
                return fd
            os.close(fd)
            time.sleep(0.05 * (attempt + 1))
        return None

    def release(self, *, failed_early: bool = False) -> None:
        """Drop the lock. ``failed_early``: the run never began (no run.json), so a folder
        this lock created is removed again, leaving nothing behind."""
        if self._fd is None:
            return
        if self.folder.lock_is(self._fd):
            self.folder.remove(LOCK_NAME)
        os.close(self._fd)  # closing drops the lock
        self._fd = None
        if failed_early and self.created and self.folder.lstat(RECORD) is None:
            shutil.rmtree(self.out, ignore_errors=True)
        elif self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty


def holds_lock_here(env: dict[str, str] | Any = None) -> bool:
    """Whether this process is the one of its launch that takes the run folder's lock:
    not a rank lorakit's launcher started (the launcher holds it), and global rank 0 of a
    hand-made launch."""
    env = os.environ if env is None else env
    if env.get("LORAKIT_LAUNCHED") == "1":
        return False
    return str(env.get("RANK", "0")) == "0"


@contextlib.contextmanager
def run_folder_lock(output_dir: str | Path, *, take: bool = True) -> Iterator[RunLock | None]:
    """Hold ``output_dir``'s lock around a run (nothing when ``take`` is false)."""
    if not take:
        yield None
        return
    lock = RunLock(output_dir).acquire()
    try:
        yield lock
    except BaseException:
        lock.release(failed_early=True)
        raise
    lock.release()


_STACK: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "lorakit_run_lock_stack", default=None
)


def holding_run_folder(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command so that :func:`hold_run_folder` inside it holds the lock until the
    command returns or fails (a failure before the run began removes a folder it created)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            token = _STACK.set(stack)
            try:
                return func(*args, **kwargs)
            finally:
                _STACK.reset(token)

    return wrapper


def hold_run_folder(output_dir: str | Path, *, machine_rank: int = 0) -> RunLock | None:
    """Take ``output_dir``'s lock for the rest of the decorated command, when this process is
    the one of its launch that holds it (see :func:`holds_lock_here`)."""
    stack = _STACK.get()
    if stack is None:
        raise RuntimeError("hold_run_folder() outside a @holding_run_folder command")
    take = holds_lock_here() and machine_rank == 0
    return stack.enter_context(run_folder_lock(output_dir, take=take))


def earlier_run(output_dir: str | Path) -> UsageError:
    """The refusal of a fresh run into a folder that holds checkpoints of an earlier one."""
    out = Path(output_dir)
    return UsageError(
        f"output_dir {out} holds checkpoints of an earlier run: continue it with --resume, "
        f"or choose a new output_dir (or delete {out / CHECKPOINTS})"
    )


def has_checkpoints(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds a whole checkpoint (what a fresh run refuses)."""
    folder = RunFolder(output_dir)
    steps = [n for n, mode in folder.entries(CHECKPOINTS).items() if n.startswith("step-")]
    return any(folder.is_file(f"{CHECKPOINTS}/{step}/{STATE}") for step in steps)
