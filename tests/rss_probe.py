"""Run the ``lorakit`` CLI and record, from the operating system, how much memory the run
grew by from just before its backend builds the model (tests/test_plan_rss.py).

    python rss_probe.py OUT.json MODULE:BACKEND_CLASS IMPORTS -- train --config c.yaml

``IMPORTS`` (comma-separated modules) are imported first: the libraries the backend's set-up
imports (peft, the model's transformers module, diffusers) hold code and tables, not the
model, and are not what the plan is about. At the entry of ``BACKEND_CLASS.setup`` the probe
reads ``/proc/self/status`` and resets the kernel's high-water mark (``clear_refs`` 5), so
``VmHWM`` at the end is the largest RSS from that moment on; when the reset is refused the
high-water mark before the model is the baseline instead (imports only grow it).
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from pathlib import Path
from typing import Any

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def status() -> dict[str, int]:
    """The memory fields of /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def main(argv: list[str]) -> None:
    out, target, imports, separator, *args = argv
    assert separator == "--", argv
    for name in filter(None, imports.split(",")):
        importlib.import_module(name)
    module, _, name = target.partition(":")
    backend = getattr(importlib.import_module(module), name)
    record: dict[str, Any] = {}
    setup = backend.setup

    def measured_setup(self: Any, ctx: Any) -> Any:
        gc.collect()
        record["reset"] = reset_high_water_mark()
        record["before"] = status()
        return setup(self, ctx)

    backend.setup = measured_setup
    from lorakit.cli import main as lorakit

    try:
        lorakit(args)
        record["exit"] = 0
    except SystemExit as exc:
        record["exit"] = exc.code
    record["end"] = status()
    Path(out).write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
