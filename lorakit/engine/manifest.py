"""Checkpoint integrity: ``manifest.json`` lists the size and SHA-256 of every file of a
checkpoint, and is written last.

``damage(folder)`` names the first file that is missing, emptied, truncated, grown or
changed since it was written (None: intact; a checkpoint of an older lorakit without a
manifest is taken as it is). The readers below turn any broken file into one line that
names it: never a bare ``SafetensorError``, ``JSONDecodeError`` or ``KeyError``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from lorakit.engine.state import TrainerState
from lorakit.errors import UsageError
from lorakit.runfolder import LARGE, MANIFEST, STATE, RunFolder, RunFolderError

VERSION = 1
_CHUNK = 1 << 20


def _digest(handle: Any) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    while chunk := handle.read(_CHUNK):
        sha.update(chunk)
        size += len(chunk)
    return size, sha.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file below ``folder`` (a checkpoint being written); call it last."""
    run = RunFolder(folder)
    files = {}
    for rel in run.files():
        if rel == MANIFEST:
            continue
        with run.open(rel, limit=LARGE) as handle:
            size, sha = _digest(handle)
        files[rel] = {"size": size, "sha256": sha}
    run.write_json(MANIFEST, {"version": VERSION, "files": files})


def _entries(run: RunFolder) -> dict[str, tuple[int, str]]:
    manifest = run.read_json(MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise RunFolderError(f"{run.where(MANIFEST)} is not a lorakit checkpoint manifest")
    entries = {}
    for rel, entry in files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not (isinstance(size, int) and size >= 0 and isinstance(sha, str) and len(sha) == 64):
            raise RunFolderError(f"{run.where(MANIFEST)}: the entry of {rel!r} is malformed")
        entries[str(rel)] = (size, sha)
    return entries


def damage(folder: str | Path) -> str | None:
    """What is wrong with the checkpoint ``folder`` (one phrase naming the file), or None."""
    run = RunFolder(folder)
    try:
        if run.lstat(MANIFEST) is None:
            return None if run.is_file(STATE) else f"{run.where(STATE)} is missing"
        entries = _entries(run)
        for rel, (size, sha) in entries.items():
            problem = _check(run, rel, size, sha)
            if problem:
                return problem
    except UsageError as exc:
        return exc.format()
    return None


def _check(run: RunFolder, rel: str, size: int, sha: str) -> str | None:
    where = run.where(rel)
    try:
        handle = run.open(rel, limit=LARGE)
    except FileNotFoundError:
        return f"{where} is missing"
    except OSError as exc:
        return f"{where}: {exc.strerror or exc}"
    with handle:
        actual = os.fstat(handle.fileno()).st_size
        if actual != size:
            if actual == 0:
                return f"{where} is empty (it was written with {size} bytes)"
            if actual < size:
                return f"{where} is truncated ({actual} of {size} bytes)"
            return f"{where} is longer than it was written ({actual} bytes, not {size})"
        if _digest(handle)[1] != sha:
            return f"{where} has changed since it was written (its SHA-256 differs)"
    return None


# -- readers that name the file ---------------------------------------------------------


def read_json(folder: Path, name: str) -> Any:
    return RunFolder(folder).read_json(name)


def read_tensors(folder: Path, name: str) -> dict[str, Any]:
    """The tensors of ``folder/name``; a broken file is one line naming it."""
    from safetensors.torch import load

    run = RunFolder(folder)
    try:
        data = run.read_bytes(name, limit=LARGE)
    except FileNotFoundError:
        raise RunFolderError(f"{run.where(name)} is missing") from None
    if not data:
        raise RunFolderError(f"{run.where(name)} is empty")
    try:
        # Owned, writable copies (load() views the file's bytes, which training updates in
        # place), in name order: load() returns them in a per-process hash order, and every
        # rank must restore an FSDP/ZeRO state dict in the same order (its collectives pair up).
        return {key: tensor.clone() for key, tensor in sorted(load(data).items())}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own and others
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise RunFolderError(
            f"{run.where(name)} is not a readable safetensors file ({text})"
        ) from None


def read_state(folder: Path) -> TrainerState:
    """The position saved in ``folder/trainer_state.json``, or one line naming the file."""
    data = read_json(folder, STATE)
    where = RunFolder(folder).where(STATE)
    if not isinstance(data, dict):
        raise RunFolderError(f"{where} is not a lorakit trainer state (not a JSON object)")
    try:
        state = TrainerState.from_dict(data)
        state.step, state.micro_batches = int(state.step), int(state.micro_batches)
        state.num_processes, state.total_steps = int(state.num_processes), int(state.total_steps)
        state.elapsed_s, state.started_at = float(state.elapsed_s), float(state.started_at)
        state.batch_size = int(state.batch_size)
        state.gradient_accumulation_steps = int(state.gradient_accumulation_steps)
        state.lr_remaps = [[int(v) for v in r] for r in state.lr_remaps]
        state.config_hash, state.lorakit_version = (
            str(state.config_hash),
            str(state.lorakit_version),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise RunFolderError(f"{where} is not a lorakit trainer state ({exc})") from None
    if state.step < 0 or state.micro_batches < 0:
        raise RunFolderError(f"{where} is not a lorakit trainer state (a negative step)")
    return state


def check_intact(folder: Path) -> None:
    """Raise the one line of a damaged checkpoint (see :func:`damage`)."""
    problem = damage(folder)
    if problem:
        raise RunFolderError(f"checkpoint {folder} is damaged: {problem}")
