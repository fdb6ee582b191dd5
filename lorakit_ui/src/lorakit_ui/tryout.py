"""The queue of the page's model work (a render, a chat answer): one at a time, in one worker
process (``lorakit_ui.try_worker``), off the server's event loop.

- At most ``capacity`` requests wait or run; one more is refused at once (:class:`Busy`,
  one line saying how many are ahead), never queued without bound.
- Each runs for at most ``timeout`` seconds (loading the model included); past it the
  worker's whole process group is killed and the next request starts a fresh one.
- An answer is one JSON line of at most ``MAX_REPLY`` bytes; anything else is a failure.
- The worker's outputs (rendered images) live in a private temporary folder, removed when
  the page stops; only the newest ``KEEP`` requests are remembered.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lorakit.api import RunFolder, UsageError
from lorakit_ui.runs import run_environment

#: Seconds one render or answer may take, loading its model included.
TIMEOUT = 900.0
#: Requests waiting or running at once.
CAPACITY = 3
#: Requests remembered (with their images).
KEEP = 32
#: The longest answer line of the worker.
MAX_REPLY = 1_000_000
#: The largest image served back.
IMAGE_LIMIT = 256 * 2**20


class Busy(UsageError):
    """The queue is full."""


@dataclass
class TryJob:
    """One request: what it asks the worker, where it stands, what came back."""

    id: int
    run: str
    request: dict[str, Any]
    state: str = "queued"  # queued, running, done, failed
    result: dict[str, Any] | None = None
    error: str | None = None
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


class TryQueue:
    """The worker process and the requests for it."""

    def __init__(
        self, *, timeout: float = TIMEOUT, capacity: int = CAPACITY, keep: int = KEEP
    ) -> None:
        self.timeout = timeout
        self.capacity = capacity
        self.keep = keep
        self.scratch = Path(tempfile.mkdtemp(prefix="lorakit-ui-try-"))
        self.jobs: dict[int, TryJob] = {}
        self.pending: deque[TryJob] = deque()
        self.running: TryJob | None = None
        self.closed = False
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue[bytes | None] = queue.Queue()
        self._log: IO[bytes] | None = None

    # -- the page's side ------------------------------------------------------------------

    def submit(self, run: str, request: dict[str, Any]) -> TryJob:
        """Queue ``request`` (for run ``run``), or raise :class:`Busy` when full."""
        with self._cond:
            if self.closed:
                raise Busy("the page is stopping")
            ahead = len(self.pending) + (self.running is not None)
            if ahead >= self.capacity:
                doing = self.running.run if self.running is not None else "?"
                raise Busy(
                    f"busy: {ahead} requests ahead (one render or answer at a time, now for "
                    f"run {doing}); try again when one finishes"
                )
            job = TryJob(next(self._ids), run, request)
            self.jobs[job.id] = job
            self.pending.append(job)
            self._forget_old()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lorakit-try", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return job

    def status(self, job_id: int) -> dict[str, Any] | None:
        """Where request ``job_id`` stands (None: no such request, or forgotten)."""
        with self._cond:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            waiting = list(self.pending)
            ahead = waiting.index(job) + (self.running is not None) if job in waiting else 0
            now = time.time()
            since = job.started_at or job.queued_at
            return {
                "id": job.id,
                "run": job.run,
                "state": job.state,
                "ahead": ahead,
                "seconds": round((job.finished_at or now) - since, 1),
                "started_at": job.started_at,
                "finished_at": job.finished_at,
                "result": job.result,
                "error": job.error,
            }

    def image(self, job_id: int) -> IO[bytes] | None:
        """The image a finished render wrote, opened (without links), or None."""
        with self._cond:
            job = self.jobs.get(job_id)
            rel = (job.result or {}).get("image") if job is not None else None
        if not isinstance(rel, str):
            return None
        try:
            return RunFolder(self.scratch).open(rel, limit=IMAGE_LIMIT)
        except (OSError, UsageError):
            return None

    def release(self) -> None:
        """Stop the worker when it is idle (its loaded model leaves memory); the next request
        starts a fresh one."""
        with self._cond:
            idle = self.running is None and not self.pending
            if idle:
                self._stop_worker()

    def shutdown(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._stop_worker()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- the worker's side ----------------------------------------------------------------

    def _forget_old(self) -> None:
        done = [j for j in self.jobs.values() if j.state in ("done", "failed")]
        for job in done[: max(0, len(self.jobs) - self.keep)]:
            del self.jobs[job.id]
            image = (job.result or {}).get("image")
            if isinstance(image, str) and "/" in image:
                shutil.rmtree(self.scratch / image.split("/")[0], ignore_errors=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.pending and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                job = self.pending.popleft()
                job.state, job.started_at = "running", time.time()
                self.running = job
            reply = self._ask(job.request)
            with self._cond:
                job.finished_at = time.time()
                if reply.get("ok"):
                    job.state, job.result = "done", reply
                else:
                    job.state, job.error = "failed", str(reply.get("error") or "failed")[:500]
                self.running = None

    def _worker(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop_worker()
        self._log = open(self.scratch / "worker.log", "ab")  # noqa: SIM115 - closed in _stop_worker
        command = [sys.executable, "-m", "lorakit_ui.try_worker", str(self.scratch)]
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=run_environment(),
            start_new_session=True,  # a timeout kills the worker and whatever it started
        )
        replies: queue.Queue[bytes | None] = queue.Queue()

        def read(stream: IO[bytes]) -> None:
            while line := stream.readline(MAX_REPLY):
                replies.put(line)
            replies.put(None)

        threading.Thread(target=read, args=(process.stdout,), daemon=True).start()
        self._process, self._replies = process, replies
        return process

    def _stop_worker(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            for stream in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _last_log_line(self) -> str:
        text = RunFolder(self.scratch).tail("worker.log", 1).strip()
        return text[:300] or "no message"

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """The worker's answer to ``request``, or a failure saying why there is none."""
        process = self._worker()
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            line = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            self._stop_worker()
            limit = f"{self.timeout:g}"
            return {
                "ok": False,
                "error": f"stopped after {limit} s, the page's limit for one request",
            }
        except OSError:
            line = None
        if line is None or not line.endswith(b"\n"):
            self._stop_worker()
            return {"ok": False, "error": f"the model worker stopped: {self._last_log_line()}"}
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._stop_worker()
            return {"ok": False, "error": "the model worker answered something else than JSON"}
        return reply
