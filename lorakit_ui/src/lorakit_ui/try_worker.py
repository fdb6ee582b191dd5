"""The page's model worker: ``python -m lorakit_ui.try_worker SCRATCH``, one request at a time.

It reads one JSON request per line on stdin and answers one JSON line on its own copy of
stdout (whatever the libraries print goes to stderr). It renders and chats through the
backends' own ``sample`` and ``chat`` (what ``lorakit sample`` and ``lorakit chat`` run):

- ``{"kind": "sample", "run", "folder", "prompt", "weight", "seed", "steps"}`` renders one
  image with the run's LoRA (of ``folder``: ``""`` the finished run, ``checkpoints/step-N``
  a checkpoint) and answers the image's name inside SCRATCH;
- ``{"kind": "chat", "run", "folder", "prompt", "on", "off", "max_new_tokens"}`` answers
  ``prompt`` twice, after the turns ``on`` with the adapter and after ``off`` without it.

The run folder may come from someone else: its config and its LoRA are copied into SCRATCH
through ``RunFolder`` (regular files only, no links, bounded) and only the copies are loaded.
The chat model stays loaded between requests; the worker exits after ``IDLE`` seconds idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import sys
from pathlib import Path
from typing import Any

from lorakit.api import Chat, LorakitError, RunFolder, UsageError, get_registries, load_config

#: Seconds without a request after which the worker exits (and frees its memory).
IDLE = 600.0
#: The largest LoRA file (or adapter file) copied from a run.
LORA_LIMIT = 16 * 2**30
#: The name the chat gives the adapter off.
BASE = "base"
#: A run's own folders, never a LoRA (a LoRA folder is an export: llm's ``adapter/``).
RUN_FOLDERS = (RunFolder.CHECKPOINTS, RunFolder.SAMPLES, "tensorboard", "cache")


class Worker:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0
        self.chat_key: tuple[Any, ...] | None = None
        self.chat: Chat | None = None
        self.adapter = ""

    # -- a run's files, copied ------------------------------------------------------------

    def _config(self, run: RunFolder, into: Path) -> Any:
        """The run's config (its config.yaml, read as ``lorakit sample --config`` reads it)."""
        into.mkdir(parents=True, exist_ok=True)
        path = into / RunFolder.CONFIG
        try:
            path.write_bytes(run.read_bytes(RunFolder.CONFIG))
        except FileNotFoundError:
            raise UsageError(f"{run.where(RunFolder.CONFIG)} is missing") from None
        return load_config(path, check_paths=False)

    def _copy(self, run: RunFolder, rel: str, into: Path) -> Path:
        """``rel`` (a file, or a folder's regular files) copied into ``into``."""
        name = rel.rsplit("/", 1)[-1]
        target = into / name
        if run.is_file(rel):
            with run.open(rel, limit=LORA_LIMIT) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            return target
        for file in run.files(rel):
            inside = target / file[len(rel) + 1 :]
            inside.parent.mkdir(parents=True, exist_ok=True)
            with run.open(file, limit=LORA_LIMIT) as source, open(inside, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        return target

    def _lora(self, run: RunFolder, folder: str, cfg: Any, into: Path) -> Path:
        """The LoRA the run exported in ``folder`` (the run's top or a checkpoint), copied:
        the first of its exports the backend recognises (``detect``) once copied."""
        backend = get_registries().backends.get(cfg.backend)
        into.mkdir(parents=True, exist_ok=True)
        entries = run.entries(folder)
        own = f"{cfg.train.name}.safetensors"
        names = sorted(entries, key=lambda n: (n != own, n.endswith(".diffusers.safetensors"), n))
        prefix = f"{folder}/" if folder else ""
        for name in names:
            folder_ok = name not in RUN_FOLDERS and run.is_dir(prefix + name)
            if not (name.endswith(".safetensors") or folder_ok):
                continue
            candidate = into / f"try-{len(list(into.iterdir()))}"
            candidate.mkdir(parents=True)
            copy = self._copy(run, prefix + name, candidate)
            if backend.detect(copy):
                return copy
        where = f"checkpoint {folder.rsplit('/', 1)[-1]}" if folder else "the finished run"
        raise UsageError(f"{run.path}: {where} holds no LoRA that backend {cfg.backend} reads")

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        run = RunFolder(str(request["run"]))
        folder = str(request.get("folder") or "")
        if request.get("kind") == "chat":
            return self.answer(run, folder, request)
        return self.render(run, folder, request)

    def render(self, run: RunFolder, folder: str, request: dict[str, Any]) -> dict[str, Any]:
        self._drop_chat()  # one model in memory at a time
        self.count += 1
        job = self.scratch / f"job-{self.count}"
        cfg = self._config(run, job / "config")
        lora = self._lora(run, folder, cfg, job / "lora")
        backend = get_registries().backends.get(cfg.backend)
        out = job / "out"
        paths = backend.sample(
            cfg.train.base_model,
            [(str(lora), float(request["weight"]))],
            [str(request["prompt"])],
            out,
            int(request["seed"]),
            int(request["steps"]) if request.get("steps") else None,
            cfg,
            None,
            None,
        )
        _tidy(job)
        images = [p for p in paths if p.stem.endswith("-00")] or paths
        return {"ok": True, "image": Path(images[0]).relative_to(self.scratch).as_posix()}

    def _drop_chat(self) -> None:
        if self.chat is not None:
            import gc

            self.chat = self.chat_key = None
            gc.collect()

    def _session(self, run: RunFolder, folder: str) -> Chat:
        """The chat of ``run``'s adapter in ``folder``, loaded once while it is unchanged."""
        key = (str(run.path), folder, _signature(run, folder))
        if self.chat is not None and key == self.chat_key:
            return self.chat
        self._drop_chat()
        self.count += 1
        job = self.scratch / f"job-{self.count}"
        cfg = self._config(run, job / "config")
        lora = self._lora(run, folder, cfg, job / "lora")
        backend = get_registries().backends.get(cfg.backend)
        self.chat = backend.chat(cfg.train.base_model, [(str(lora), 1.0)], "auto", None, None, 64)
        self.adapter = self.chat.active
        _tidy(job)
        self.chat_key = key
        return self.chat

    def answer(self, run: RunFolder, folder: str, request: dict[str, Any]) -> dict[str, Any]:
        chat = self._session(run, folder)
        chat.max_new_tokens = int(request["max_new_tokens"])
        answers = {}
        for side, name in (("on", self.adapter), ("off", BASE)):
            chat.use(name)
            chat.history = [dict(turn) for turn in request[side]]
            answers[side] = chat.ask(str(request["prompt"]))
        return {"ok": True, **answers}


def _signature(run: RunFolder, folder: str) -> tuple[tuple[str, int, int], ...]:
    """What changes when the files of ``folder`` do (a checkpoint rewritten, a new export)."""
    prefix = f"{folder}/" if folder else ""
    found = []
    for name in sorted(run.entries(folder)):
        info = run.lstat(prefix + name)
        if info is not None:
            found.append((name, info.st_size, info.st_mtime_ns))
    return tuple(found)


def _tidy(job: Path) -> None:
    """The copies a job loaded (its output stays until the page drops it)."""
    for part in ("config", "lora"):
        shutil.rmtree(job / part, ignore_errors=True)


def _answer(worker: Worker, line: str) -> dict[str, Any]:
    try:
        request = json.loads(line)
        return worker.handle(request)
    except LorakitError as exc:
        return {"ok": False, "error": exc.format()}
    except Exception as exc:  # one line for the page; the traceback in the worker's log
        import traceback

        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return {"ok": False, "error": text}


def main(argv: list[str]) -> int:
    scratch = Path(argv[0])
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything printed (progress, libraries) goes to the log, not the answers
    sys.stdout = sys.stderr
    worker = Worker(scratch)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], IDLE)
        if not ready:
            return 0
        line = sys.stdin.readline()
        if not line:
            return 0
        reply = _answer(worker, line)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
