"""Runs under the runs folder: what run.json and metrics.jsonl say, and ``lorakit train``
subprocesses started, stopped (the engine's graceful stop) and resumed from the page."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, earlier_run, has_checkpoints, holder, in_use

#: The page's own files (logs of the runs it started) live here, inside the runs folder.
UI_DIR = ".lorakit-ui"
#: Files a run page offers for download, besides every ``.safetensors`` at the top.
DOWNLOADS = ("config.yaml", "run.json", "metrics.jsonl", "loss.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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


def train_command(config: Path, resume: bool) -> list[str]:
    """The ``lorakit train`` command line the page runs (the CLI, not a copy of it)."""
    command = [sys.executable, "-m", "lorakit.cli", "train", "--config", str(config)]
    return [*command, "--no-progress", *(["--resume"] if resume else [])]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path, since: int = 0) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl from row ``since`` on (a half-written last line is skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines[since:]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def tail(path: Path, lines: int = 80) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


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

    # -- names and places ------------------------------------------------------------------

    def name_of(self, output_dir: str | Path) -> str:
        """A run's name: its output_dir relative to the runs folder."""
        path = Path(output_dir).expanduser().resolve()
        if not path.is_relative_to(self.runs_dir) or path == self.runs_dir:
            raise UsageError(f"output_dir must be a folder inside the runs folder {self.runs_dir}")
        return path.relative_to(self.runs_dir).as_posix()

    def path_of(self, name: str) -> Path:
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
        for pattern in ("*/run.json", "*/*/run.json"):
            for record in self.runs_dir.glob(pattern):
                if UI_DIR in record.parts:
                    continue
                name = record.parent.relative_to(self.runs_dir).as_posix()
                problem = self._unlisted(record.parent)
                if problem:
                    if notes is not None:
                        notes.append(f"{name}: skipped ({problem})")
                    continue
                found.add(name)

        def started(name: str) -> float:
            try:
                return (self.runs_dir / name / "run.json").stat().st_mtime
            except OSError:
                return time.time()

        return sorted(found, key=started, reverse=True)

    def _unlisted(self, folder: Path) -> str | None:
        """Why a run folder is not listed (a symlink, unreadable), or None."""
        here = folder
        while here != self.runs_dir:
            if here.is_symlink():
                return "a symbolic link"
            here = here.parent
        if not os.access(folder / "run.json", os.R_OK) or not os.access(folder, os.R_OK | os.X_OK):
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
        record = read_json(out / "run.json") or {}
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
            rows = read_metrics(out / "metrics.jsonl")
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
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
        other = holder(self.path_of(name))
        if other is None or not other.pid:
            raise UsageError(f"run {name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(other.pid, signal.SIGTERM)
        self.signalled.add(name)

    def resume(self, name: str) -> str:
        """Continue a run from its newest checkpoint, with the config it ran with (its
        resolved ``config.yaml``, which later edits of the form's file do not change)."""
        out = self.path_of(name)
        if not (out / "config.yaml").is_file():
            raise UsageError(f"run {name} has no config.yaml to resume with")
        return self.start(out / "config.yaml", out, resume=True)

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
        """The newest sample images (with their prompt) and text samples."""
        out = self.path_of(name)
        folder = out / "samples"
        if not folder.is_dir():
            return []
        config = _yaml(out / "config.yaml")
        prompts = config.get("sample_prompts") or []
        if isinstance(prompts, str):
            prompts = [prompts]
        files = sorted(
            (p for p in folder.rglob("*") if p.is_file()),
            key=lambda p: (p.stat().st_mtime, p.name),
            reverse=True,
        )
        names = {p.name for p in files}
        found = []
        for path in files:
            if f"{path.stem}-00{path.suffix}" in names:
                continue  # a contact sheet of images listed one by one
            rel = path.relative_to(out).as_posix()
            if path.suffix.lower() in IMAGE_SUFFIXES:
                match = re.search(r"-(\d+)$", path.stem)
                index = int(match.group(1)) if match else None
                prompt = prompts[index] if index is not None and index < len(prompts) else ""
                found.append({"kind": "image", "path": rel, "prompt": prompt})
            elif path.suffix.lower() in (".txt", ".md", ".jsonl"):
                found.append({"kind": "text", "path": rel, "text": tail(path, 40)})
            if len(found) >= limit:
                break
        return found

    def downloads(self, name: str) -> list[str]:
        """Exported files (top-level .safetensors, the adapter folder) and the run's records."""
        out = self.path_of(name)
        if not out.is_dir():
            return []
        files = sorted(p for p in out.glob("*.safetensors") if p.is_file())
        files += sorted(p for p in (out / "adapter").glob("*") if p.is_file())
        files += [out / n for n in DOWNLOADS if (out / n).is_file()]
        folders = ["adapter/"] if (out / "adapter").is_dir() else []
        return folders + [p.relative_to(out).as_posix() for p in files]

    def folder(self, name: str, rel: str) -> Path:
        out = self.path_of(name)
        path = (out / rel).resolve()
        if not path.is_relative_to(out) or path == out or not path.is_dir():
            raise UsageError(f"run {name} has no folder {rel}")
        return path

    def config_text(self, name: str) -> str:
        try:
            return (self.path_of(name) / "config.yaml").read_text(encoding="utf-8")
        except OSError:
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
            backend = _yaml(self.runs_dir / name / "config.yaml").get("backend")
            if isinstance(backend, str):
                return backend
        return None

    def file(self, name: str, rel: str) -> Path:
        out = self.path_of(name)
        path = (out / rel).resolve()
        if not path.is_relative_to(out) or not path.is_file():
            raise UsageError(f"run {name} has no file {rel}")
        return path

    def log_tail(self, name: str, lines: int = 80) -> str:
        return tail(self.log_of(name), lines)


def _terminate(pid: int) -> None:
    """SIGTERM to a run's process group: the engine finishes the step and checkpoints."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)


def _elapsed(out: Path) -> float | None:
    rows = read_metrics(out / "metrics.jsonl")
    return rows[-1].get("elapsed_s") if rows else None


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
