"""One lorakit line per distinct error of a multi-process run.

Every rank of a failed run would print the same ``lorakit: error:`` line, and torch's
launcher agent adds its ``ChildFailedError`` traceback and failure table. Under lorakit's
launcher a rank records its error in a file instead (``record``); the launcher filters the
agent's report out of the output it passes on (``StderrFilter``) and prints each distinct
error once, exiting with the code of the rank that failed first (``report``).
``LORAKIT_DEBUG=1`` passes everything through.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO

#: The folder where launched ranks record their errors (set by the launcher).
ERRORS_DIR = "LORAKIT_RANK_ERRORS"

_AGENT_LOG = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d")  # torch elastic's log lines
#: What a rank reports when another one failed and left the process group (gloo, NCCL):
#: a consequence, not an error of its own.
_PEER_LOST = re.compile(
    r"Connection (closed|reset) by peer|remote worker crash|Broken pipe|"
    r"NCCL communicator was aborted|ProcessGroupNCCL.*(watchdog|aborted)",
    re.IGNORECASE,
)


def record(message: str, code: int) -> bool:
    """In a rank under lorakit's launcher: write the error for the launcher; True if written."""
    folder = os.environ.get(ERRORS_DIR)
    if not folder or "RANK" not in os.environ:
        return False
    path = Path(folder) / f"rank{os.environ['RANK']}.json"
    try:
        path.write_text(json.dumps({"message": message, "code": code, "time": time.time()}))
    except OSError:
        return False
    return True


def report(folder: Path, code: int) -> int:
    """Print each distinct recorded error once; the exit code of the first to fail.

    Errors that only say a peer left the process group are dropped when a rank recorded
    the error that made it leave.
    """
    found = []
    for path in sorted(Path(folder).glob("rank*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    found.sort(key=lambda r: r["time"])
    causes = [r for r in found if not _PEER_LOST.search(r["message"])]
    found = causes or found  # ranks that only lost their peers say nothing new
    seen: set[str] = set()
    for entry in found:
        if entry["message"] not in seen:
            seen.add(entry["message"])
            print(f"lorakit: error: {entry['message']}", file=sys.stderr)
    if found:
        return int(found[0]["code"])
    print(
        f"lorakit: error: a process of the run ended with exit code {code} "
        f"(LORAKIT_DEBUG=1 shows the launcher's report)",
        file=sys.stderr,
    )
    return 1


class StderrFilter:
    """Pass the launch's stderr on line by line, holding back torch elastic's report.

    From the agent's first log line or a ``Traceback`` on, lines are held; they are shown
    only if the run then succeeds (so nothing is lost when they were not a failure report).
    """

    def __init__(self, source: IO[str], sink: IO[str] | None = None) -> None:
        self.source, self.sink = source, sink or sys.stderr
        self.held: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.source:
            if self.held or _AGENT_LOG.match(line) or line.startswith("Traceback"):
                self.held.append(line)
            else:
                self.sink.write(line)
                self.sink.flush()

    def close(self, succeeded: bool) -> None:
        self.thread.join(timeout=10)
        if succeeded and self.held:
            self.sink.write("".join(self.held))
            self.sink.flush()
