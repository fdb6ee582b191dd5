"""Runs under the runs folder: what their records and metrics say, and ``lorakit train``
subprocesses started, stopped (the engine's graceful stop) and resumed from the page.

Every file of a run is read through ``RunFolder``: bounded, never through a link, never
blocking on a FIFO; a file the page cannot read that way is not shown or served."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.api import RunFolder, UsageError
from lorakit.app import earlier_run, has_checkpoints, holder, holds, in_use

#: The page's own files (logs of the runs it started) live here, inside the runs folder.
UI_DIR = ".lorakit-ui"
#: Files a run page offers for download, besides every ``.safetensors`` at the top.
DOWNLOADS = (RunFolder.CONFIG, RunFolder.RECORD, RunFolder.METRICS, RunFolder.LOSS_PLOT)
ADAPTER = "adapter"
#: Longest run name the page looks up (a name is a path below the runs folder).
MAX_NAME = 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: preview clips of video models (shown as video; their animated .webp twin is not listed)
VIDEO_SUFFIXES = (".mp4", ".webm")
#: The largest file a run page serves.
LARGE_FILE = 64 * 2**30


@dataclass
class Job:
    """A ``lorakit train`` subprocess this page started."""

    name: str
    output_dir: Path
    config: Path
    process: subprocess.Popen
    log: Path
    stopping: bool = False
    started: float = field(default_factory=time.time)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


#: What the person opted into for their own commands, never for a run the page starts.
PERSONAL_OPT_INS = ("LORAKIT_ALLOW_UNSAFE_PICKLE",)


def run_environment() -> dict[str, str]:
    """The environment of a run the page starts: the page's, without the person's opt-ins
    to danger (a run folder from someone else is resumed with one click)."""
    env = {k: v for k, v in os.environ.items() if k not in PERSONAL_OPT_INS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(config: Path, resume: bool) -> list[str]:
    """The ``lorakit train`` command line the page runs (the CLI, not a copy of it)."""
    command = [sys.executable, "-m", "lorakit.cli", "train", "--config", str(config)]
    return [*command, "--no-progress", *(["--resume"] if resume else [])]


def read_record(out: Path) -> dict[str, Any] | None:
    """A run's record (run.json), or None when it is missing or not one lorakit reads."""
    return RunFolder(out).try_json(RunFolder.RECORD)


def read_metrics(out: Path, since: int = 0) -> list[dict[str, Any]]:
    """The rows of a run's metrics from row ``since`` on (a half-written last line is
    skipped; a metrics file that is a link, a FIFO or too large gives none)."""
    try:
        return RunFolder(out).metrics(since)
    except (OSError, UsageError):
        return []


def tail(path: Path, lines: int = 80) -> str:
    return RunFolder(path.parent).tail(path.name, lines)


def check_name(name: str) -> None:
    """A run name the page can look up (no NUL, no over-long part), or one line."""
    parts = name.split("/")
    if "\0" in name or len(name) > MAX_NAME or any(len(p.encode()) > 255 for p in parts):
        raise UsageError(f"no run named {name[:60]!r}")


class RunManager:
    """The runs folder and the trainings started from the page.

    Only one training runs at a time unless ``parallel`` (one GPU, one run).
    """

    def __init__(self, runs_dir: str | Path, parallel: bool = False) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.parallel = parallel
        self.jobs: dict[str, Job] = {}
        self.signalled: set[str] = set()  # runs of other processes this page asked to stop
        self._lock = threading.Lock()
        #: Called before a training starts (the page's model worker frees its memory).
        self.before_start: Callable[[], None] | None = None

    # -- names and places ------------------------------------------------------------------

    def name_of(self, output_dir: str | Path) -> str:
        """A run's name: its output_dir relative to the runs folder."""
        path = Path(output_dir).expanduser().resolve()
        if not path.is_relative_to(self.runs_dir) or path == self.runs_dir:
            raise UsageError(f"output_dir must be a folder inside the runs folder {self.runs_dir}")
        return path.relative_to(self.runs_dir).as_posix()

    def path_of(self, name: str) -> Path:
        check_name(name)
        path = (self.runs_dir / name).resolve()
        if not path.is_relative_to(self.runs_dir) or path == self.runs_dir:
            raise UsageError(f"no run named {name}")
        return path

    def log_of(self, name: str) -> Path:
        return self.runs_dir / UI_DIR / "logs" / (name.replace("/", "__") + ".log")

    # -- listing ---------------------------------------------------------------------------

    def names(self, notes: list[str] | None = None) -> list[str]:
        """Every run under the runs folder (a folder with run.json, two levels deep) and every
        run started from the page, newest first. A symlinked or unreadable folder is skipped
        (with a line in ``notes``)."""
        found = set(self.jobs)
        top = RunFolder(self.runs_dir)
        for first in top.entries():
            if first == UI_DIR:
                continue
            candidates = [first] + [f"{first}/{n}" for n in top.entries(first)]
            for name in candidates:
                problem = self._unlisted(name)
                if problem is None:
                    found.add(name)
                elif problem and notes is not None:
                    notes.append(f"{name}: skipped ({problem})")

        def started(name: str) -> float:
            info = RunFolder(self.runs_dir / name).lstat(RunFolder.RECORD)
            return info.st_mtime if info is not None else time.time()

        return sorted(found, key=started, reverse=True)

    def _unlisted(self, name: str) -> str | None:
        """Why ``name`` is not listed: "" when it is no run (no record), a reason when it
        is one the page will not read (a link, a record that is a link, unreadable)."""
        top = RunFolder(self.runs_dir)
        info = top.lstat(name)
        if info is None:
            return ""
        if stat.S_ISLNK(info.st_mode):
            linked = os.path.lexists(self.runs_dir / name / RunFolder.RECORD)
            return "a symbolic link" if linked else ""
        record = top.lstat(f"{name}/{RunFolder.RECORD}")
        if record is None:
            return ""
        if not stat.S_ISREG(record.st_mode):
            return f"its {RunFolder.RECORD} is not a regular file"
        if not os.access(self.runs_dir / name, os.R_OK | os.X_OK):
            return "not readable"
        return None

    def listing(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The summaries of every run, and a note per folder that could not be read."""
        notes: list[str] = []
        listed = []
        for name in self.names(notes):
            try:
                listed.append(self.summary(name))
            except (OSError, UsageError) as exc:
                notes.append(f"{name}: skipped ({exc})")
        return listed, notes

    def summary(self, name: str) -> dict[str, Any]:
        """Status (running, stopping, starting, finished, failed, interrupted), steps, loss, time."""
        out = self.path_of(name)
        record = read_record(out) or {}
        job = self.jobs.get(name)
        status = record.get("status", "unknown")
        error = record.get("error")
        other = holder(out) if job is None or not job.alive else None
        if other is not None:  # a training this page did not start (or a page before it)
            status, error = "stopping" if name in self.signalled else "running", None
        elif job is not None:
            if job.alive:
                status = "stopping" if job.stopping else "running" if record else "starting"
            elif job.process.returncode != 0 and status in ("running", "unknown"):
                status = "failed"  # the process died before run.json said how it ended
                error = error or tail(job.log, 1)
        steps = record.get("steps")
        if steps is None or status == "running":
            rows = read_metrics(out)
            steps = rows[-1].get("step", len(rows)) if rows else 0
            loss = rows[-1].get("loss") if rows else None
        else:
            loss = record.get("final_loss")
        return {
            "name": name,
            "status": status,
            "steps": steps,
            "total_steps": record.get("total_steps"),
            "loss": loss,
            "started_at": record.get("started_at"),
            "finished_at": record.get("finished_at"),
            "elapsed_s": _elapsed(out),
            "error": error,
            "can_stop": (job is not None and job.alive and not job.stopping)
            or (other is not None and name not in self.signalled),
            "can_resume": status in ("interrupted", "failed")
            and has_checkpoints(out)
            and not (job is not None and job.alive)
            and other is None,
            "pid": other.pid if other is not None else (job.process.pid if job else None),
        }

    # -- control ---------------------------------------------------------------------------

    def running(self) -> list[str]:
        return [name for name, job in self.jobs.items() if job.alive]

    def start(
        self,
        config: str | Path,
        output_dir: str | Path,
        *,
        resume: bool = False,
        write: Callable[[], None] | None = None,
        backend: str | None = None,
    ) -> str:
        """Start ``lorakit train --config CONFIG [--resume]``; the run's name.

        Every refusal comes before ``write`` (which saves the config file): a refused start
        changes no file.
        """
        name = self.name_of(output_dir)
        out = self.path_of(name)
        with self._lock:
            busy = self.running()
            if name in busy:
                raise UsageError(f"run {name} is already running")
            other = holder(out)
            if other is not None:
                raise in_use(out, other)
            if busy and not self.parallel:
                raise UsageError(
                    f"run {busy[0]} is still training: one run at a time "
                    "(start lorakit ui --parallel to allow more)"
                )
            if not resume and has_checkpoints(out):
                raise earlier_run(out)
            if write is not None:
                write()
            if self.before_start is not None:
                self.before_start()
            log = self.log_of(name)
            log.parent.mkdir(parents=True, exist_ok=True)
            command = train_command(Path(config), resume)
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"$ lorakit {' '.join(command[3:])}\n")
                handle.flush()
                process = subprocess.Popen(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=run_environment(),
                    start_new_session=True,  # a stop reaches the run's whole process group
                )
            self.jobs[name] = Job(name, Path(output_dir), Path(config), process, log)
            self.signalled.discard(name)
        return name

    def stop(self, name: str) -> None:
        """The engine's graceful stop (as Ctrl-C): finish the step, checkpoint, exit. A run
        this page did not start (or started before a restart) gets the signal through the
        PID in its folder's lock."""
        job = self.jobs.get(name)
        if job is not None and job.alive:
            job.stopping = True
            _terminate(job.process.pid)
            return
        out = self.path_of(name)
        other = holder(out)
        if other is None or not other.pid:
            raise UsageError(f"run {name} is not running")
        if not holds(other.pid, out):  # a PID from a file: signal only the run's own trainer
            raise UsageError(
                f"run {name}: PID {other.pid} is not a lorakit training holding this folder's "
                "lock; not stopping it"
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(other.pid, signal.SIGTERM)
        self.signalled.add(name)

    def resume(self, name: str) -> str:
        """Continue a run from its newest checkpoint, with the config it ran with (its
        resolved ``config.yaml``, which later edits of the form's file do not change)."""
        out = self.path_of(name)
        if not RunFolder(out).is_file(RunFolder.CONFIG):
            raise UsageError(
                f"run {name} has no {RunFolder.CONFIG} (a regular file) to resume with"
            )
        return self.start(out / RunFolder.CONFIG, out, resume=True)

    def shutdown(self) -> None:
        """Stop every training this page started (each writes its checkpoint) and wait."""
        for job in self.jobs.values():
            if job.alive:
                _terminate(job.process.pid)
        for job in self.jobs.values():
            try:
                job.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.process.kill()

    # -- what a run page shows ---------------------------------------------------------------

    def samples(self, name: str, limit: int = 12) -> list[dict[str, Any]]:
        """The newest sample images and clips (with their prompt) and text samples."""
        out = self.path_of(name)
        run = RunFolder(out)
        if not run.is_dir(RunFolder.SAMPLES):
            return []
        config = _yaml(out, RunFolder.CONFIG)
        prompts = config.get("sample_prompts") or []
        if isinstance(prompts, str):
            prompts = [prompts]
        mtimes = {rel: run.lstat(rel) for rel in run.files(RunFolder.SAMPLES)}  # no links
        files = sorted(
            (Path(rel) for rel, info in mtimes.items() if info is not None),
            key=lambda p: (mtimes[p.as_posix()].st_mtime, p.name),  # type: ignore[union-attr]
            reverse=True,
        )
        names = {p.name for p in files}
        found = []
        for path in files:
            if any(f"{path.stem}-00{s}" in names for s in (path.suffix, *VIDEO_SUFFIXES)):
                continue  # a contact sheet of images (or clips) listed one by one
            if path.suffix.lower() == ".webp" and any(
                path.with_suffix(s).name in names for s in VIDEO_SUFFIXES
            ):
                continue  # the animated twin of a clip listed as video
            rel = path.as_posix()
            if path.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES):
                kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
                match = re.search(r"-(\d+)$", path.stem)
                index = int(match.group(1)) if match else None
                prompt = prompts[index] if index is not None and index < len(prompts) else ""
                found.append({"kind": kind, "path": rel, "prompt": prompt})
            elif path.suffix.lower() in (".txt", ".md", ".jsonl"):
                found.append({"kind": "text", "path": rel, "text": run.tail(rel, 40)})
            if len(found) >= limit:
                break
        return found

    def downloads(self, name: str) -> list[str]:
        """Exported files (top-level .safetensors, the adapter folder) and the run's records."""
        run = RunFolder(self.path_of(name))
        top = run.entries()
        regular = {n for n, mode in top.items() if stat.S_ISREG(mode)}
        files = sorted(n for n in regular if n.endswith(".safetensors"))
        adapter = top.get(ADAPTER)
        if adapter is not None and stat.S_ISDIR(adapter):
            files += [f for f in run.files(ADAPTER) if f.count("/") == 1]
        files += [n for n in DOWNLOADS if n in regular]
        folders = [f"{ADAPTER}/"] if adapter is not None and stat.S_ISDIR(adapter) else []
        return folders + files

    def folder(self, name: str, rel: str) -> tuple[RunFolder, str]:
        """A folder of a run (its files read through the run folder, links skipped)."""
        run = RunFolder(self.path_of(name))
        rel = rel.strip("/")
        if not rel or not run.is_dir(rel):
            raise UsageError(f"run {name} has no folder {rel}")
        return run, rel

    def config_text(self, name: str) -> str:
        try:
            return RunFolder(self.path_of(name)).read_text(RunFolder.CONFIG)
        except (OSError, UsageError):
            return ""

    def free_run_dir(self, wanted: str) -> Path:
        """``runs/wanted``, or ``wanted-2``, ``-3``... when that folder is taken."""
        path, n = self.runs_dir / wanted, 1
        while path.exists() or path.with_name(f"{path.name}.yaml").exists():
            n += 1
            path = self.runs_dir / f"{wanted}-{n}"
        return path

    def last_backend(self) -> str | None:
        """The backend of the newest run (the one the user picked last)."""
        for name in self.names():
            backend = _yaml(self.runs_dir / name, RunFolder.CONFIG).get("backend")
            if isinstance(backend, str):
                return backend
        return None

    def file(self, name: str, rel: str) -> tuple[Any, str]:
        """A file of a run opened for reading (a regular file reached without links), and
        its name."""
        run = RunFolder(self.path_of(name))
        try:
            return run.open(rel, limit=LARGE_FILE), Path(rel).name
        except (OSError, UsageError):
            raise UsageError(f"run {name} has no file {rel[:200]}") from None

    def log_tail(self, name: str, lines: int = 80) -> str:
        return tail(self.log_of(name), lines)


def _terminate(pid: int) -> None:
    """SIGTERM to a run's process group: the engine finishes the step and checkpoints."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)


def _elapsed(out: Path) -> float | None:
    rows = read_metrics(out)
    return rows[-1].get("elapsed_s") if rows else None


def _yaml(folder: Path, name: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(RunFolder(folder).read_text(name))
    except (OSError, UsageError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
