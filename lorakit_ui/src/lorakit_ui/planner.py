"""``lorakit plan`` beside the form: the same plan, made in a worker process.

A plan imports torch and traces a step on the meta device: seconds of work that must never
hold the server's event loop, and that a strange config could make long. So the page plans
in one long-lived worker process (``python -m lorakit_ui.planner``, so torch and the
backends are imported once; its environment is a run's, without the person's opt-ins to
danger), one plan at a time; a plan that takes longer than :data:`PLAN_TIMEOUT` seconds ends the
worker (the next plan starts a fresh one) and is answered with one line. The worker writes
the form's YAML to a file beside the config's own path (so relative paths mean what they
will mean to ``lorakit train``), loads it with ``load_config`` and returns
:meth:`lorakit.planning.plan.Plan.as_dict`: what ``lorakit plan --json`` prints.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from lorakit_ui.runs import run_environment

#: Seconds a plan may take before its worker is ended.
PLAN_TIMEOUT = 90.0
#: ``gpu`` value that means this machine's first GPU.
LOCAL = "local"


def make(text: str, path: str, gpu: str) -> dict[str, Any]:
    """The plan of the config ``text`` (as if saved at ``path``) for the card ``gpu``
    (a size or card name, ``local``, or empty for none): ``{ok, plan}`` or ``{ok, error}``."""
    from lorakit.api import LorakitError, load_config, write_text
    from lorakit.app import local_card, make_plan, parse_gpu

    where = Path(path)
    probe = where.with_name(f".{where.name}.plan.yaml")
    try:
        card = local_card() if gpu == LOCAL else parse_gpu(gpu) if gpu else None
        write_text(probe, text)
        try:
            config = load_config(probe)
        finally:
            probe.unlink(missing_ok=True)
        plan = make_plan(config, card)
    except LorakitError as exc:
        return {"ok": False, "error": exc.format()}
    except Exception as exc:  # noqa: BLE001 - a plan is advice: its failure is one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"ok": False, "error": f"no plan: {text}"}
    local = None if gpu != LOCAL else ("none on this machine" if card is None else str(card))
    return {"ok": True, "plan": plan.as_dict(), "summary": plan.summary(), "local_gpu": local}


def serve() -> None:
    """The worker (``python -m lorakit_ui.planner``): one JSON request a line on stdin, one
    JSON answer a line on stdout, until stdin closes. What libraries print goes to stderr."""
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    for line in sys.stdin:
        text, path, gpu = json.loads(line)
        answers.write(json.dumps(make(text, path, gpu)) + "\n")
        answers.flush()


class PlanWorker:
    """The worker process, started on the first plan and again after one is ended."""

    def __init__(self, timeout: float = PLAN_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def plan(self, text: str, path: str | Path, gpu: str) -> dict[str, Any]:
        """The plan (see :func:`make`); one at a time, each bounded by ``timeout``."""
        if not self._lock.acquire(timeout=self.timeout):
            return {"ok": False, "error": "another plan is still running; try again"}
        try:
            process = self._process
            if process is None or process.poll() is not None:
                process = self._process = self._start()
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps([text, str(path), gpu]).encode() + b"\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], self.timeout)
            if not ready:
                self._stop()
                return {
                    "ok": False,
                    "error": f"the plan took longer than {self.timeout:g} s and was stopped",
                }
            line = process.stdout.readline()
            if not line:
                raise EOFError
            answer: dict[str, Any] = json.loads(line)
            return answer
        except (EOFError, OSError, ValueError):
            self._stop()
            return {"ok": False, "error": "the plan's worker process ended; try again"}
        finally:
            self._lock.release()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "lorakit_ui.planner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=run_environment(),
        )

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(5)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

    def shutdown(self) -> None:
        """End the worker (the server is stopping)."""
        with self._lock:
            self._stop()


if __name__ == "__main__":
    serve()
