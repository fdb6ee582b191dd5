"""One writer per run folder: an exclusive lock on ``output_dir/.lorakit.lock``.

``lorakit train`` holds it for the whole run. In a multi-process launch only the process
that starts the run holds it (lorakit's launcher, or global rank 0 of a hand-made
``accelerate launch`` / ``torchrun``); the ranks a launcher started leave it alone. The lock
is the operating system's (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), so a
process that dies for any reason, SIGKILL included, releases it, and the next run takes over
the file it left. The file holds the holder's PID and start time, for the one line a second
writer gets and for ``lorakit ui``, which reads it to show (and stop) a training it did not
start.

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
from typing import IO, Any

from lorakit.errors import UsageError

#: The lock file's name inside ``output_dir``.
LOCK_NAME = ".lorakit.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder: the process id, when it took the lock, its command line."""

    pid: int
    started_at: float
    command: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"PID {self.pid}, since {when}"


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(int(data["pid"]), float(data["started_at"]), str(data.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder(output_dir: str | Path) -> Holder | None:
    """The live process that holds ``output_dir``, or None when no one trains there.

    The answer comes from the lock itself (a probe that takes and drops it), not from the
    PID in the file: a file left by a dead process reads as free.
    """
    path = Path(output_dir) / LOCK_NAME
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with handle:
        if _try_lock(handle):
            return None  # free (closing the handle drops the probe's lock)
    return _read(path) or Holder(0, 0.0)


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
        self.path = self.out / LOCK_NAME
        self.created = False
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``UsageError`` naming the process that holds it."""
        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            handle = self._lock_file()
        except OSError as exc:
            raise UsageError(f"output_dir {self.out}: cannot write here ({exc.strerror})") from None
        if handle is None:
            if self.created:
                shutil.rmtree(self.out, ignore_errors=True)
            raise in_use(self.out, _read(self.path))
        # A stale file of a dead process is simply overwritten: the lock was free.
        record = {"pid": os.getpid(), "started_at": time.time(), "command": " ".join(sys.argv)}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record))
        handle.flush()
        self._handle = handle
        return self

    def _lock_file(self) -> IO[str] | None:
        """The locked, open lock file, or None when a live process holds it.

        A few tries a little apart: ``holder`` probes take the lock for an instant. After
        locking, the file must still be the one at the path (a holder that was releasing may
        have removed it meanwhile; then the new file is locked instead).
        """
        for attempt in range(5):
            # "a+": never truncate a file another process may hold (its PID stays readable).
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open
            if _try_lock(handle):
                try:
                    same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    return handle
            handle.close()
            time.sleep(0.05 * (attempt + 1))
        return None

    def release(self, *, failed_early: bool = False) -> None:
        """Drop the lock. ``failed_early``: the run never began (no run.json), so a folder
        this lock created is removed again, leaving nothing behind."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()  # closing drops the lock
        self._handle = None
        if failed_early and self.created and not (self.out / "run.json").exists():
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
        f"or choose a new output_dir (or delete {out / 'checkpoints'})"
    )


def has_checkpoints(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds a whole checkpoint (what a fresh run refuses)."""
    root = Path(output_dir) / "checkpoints"
    return any((p / "trainer_state.json").is_file() for p in root.glob("step-*"))
