"""Atomic file and folder writes: a reader sees the old file or the new one, never half.

Everything lorakit writes for a user (exports, checkpoints, metadata.csv) goes through
here: write to a temporary name in the same folder, flush and fsync, then ``os.replace``.
A full disk or a kill mid-write leaves the previous file as it was. A temporary name
carries its writer's PID (``.NAME.PID-RANDOM.tmp``): the next writer of ``NAME`` removes
those of writers that are no longer alive (a SIGKILL during a save, a merge, an export).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lorakit.errors import RunError


def disk_error(path: Path, exc: OSError) -> RunError:
    """The one line of a failed write (a full disk says so)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunError(f"disk full while writing {path}; the previous file is intact")
    return RunError(f"cannot write {path}: {exc.strerror or exc}")


def fsync_fd(fd: int) -> None:
    """fsync a folder's descriptor (some file systems refuse; the rename still happened)."""
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            fsync_fd(fd)
        finally:
            os.close(fd)


def temp_prefix(name: str) -> str:
    """The start of this process's temporary names for ``name``."""
    return f".{name}.{os.getpid()}-"


def temp_name(name: str, unique: str) -> str:
    return f"{temp_prefix(name)}{unique}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def remove_stale_temps(entries: Iterable[str], name: str, remove: Callable[[str], None]) -> None:
    """Remove (with ``remove``) the temporary files of ``name`` among ``entries`` whose
    writer is dead."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)-[^/]*\.tmp$")
    for entry in entries:
        found = pattern.match(entry)
        if found and int(found.group(1)) != os.getpid() and not _alive(int(found.group(1))):
            with contextlib.suppress(OSError):
                remove(entry)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean(path: Path) -> None:
    with contextlib.suppress(OSError):
        remove_stale_temps(
            os.listdir(path.parent), path.name, lambda n: _remove_any(path.parent / n)
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have:
    ``tempfile`` makes them private (0600/0700), and a user's umask decides who reads
    what lorakit writes for them."""
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean(path)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _as_created(tmp, 0o666)  # after writing: some writers (safetensors) recreate the file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_safetensors(
    tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` through a temporary name."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp),
            metadata=metadata,
        )


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces the folder ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    _as_created(tmp, 0o777)
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_dir():
                _as_created(file, 0o777)
            elif file.is_file():
                # safetensors (and so peft) writes 0600 files: give each the umask's mode
                _as_created(file, 0o666)
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def parse_lora(text: str) -> tuple[str, float]:
    """``path[:weight]`` → (path, weight)."""
    path, sep, weight = text.rpartition(":")
    if sep and path and not weight.startswith(("\\", "/")):
        try:
            return path, float(weight)
        except ValueError:
            pass
    return text, 1.0
