"""``lorakit plan`` against a measurement it does not make: the operating system's count of
the memory a real ``lorakit train`` process grows by.

The plan traces one step on fake tensors under torch's memory tracker. The judge here is the
kernel: a ``lorakit train`` subprocess (tests/rss_probe.py) reads ``/proc/self/status`` just
before the backend builds the model, resets the high-water mark there, and reads ``VmHWM`` at
the end. What the run grew by is compared with the plan's peak for the same config.

What RSS counts that the plan does not, and how the test deals with it:

- **glibc keeps freed memory.** With glibc's default (a dynamic mmap threshold that rises
  to 32 MiB after the first large free), most tensors of a step come from malloc's heaps and
  arenas, which are not given back when the tensors die: the next step's tensors land beside
  them and RSS reached 2.2× the plan (416 MiB for a 191 MiB step, measured here). That is the
  C allocator's cache, not the step's need (on a GPU, ``max_memory_reserved`` beside
  ``max_memory_allocated``). The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=131072``: every
  allocation over 128 KiB is its own mapping, unmapped when the tensor is freed, and the
  kernel updates the high-water mark before every unmap. Smaller allocations stay in the
  heap: a few MiB.
- **Library code paged in.** The first step runs kernels whose code pages were never read
  before (libtorch, oneDNN): +33 MiB of file-backed RSS here, whatever the model's size.
  File pages only grow during a run, so the growth of ``RssFile`` between the baseline and
  the end is subtracted.
- **Imports.** The libraries the set-up imports (peft, the model's transformers module) are
  imported before the baseline; they alone grew RSS by ~120 MiB.
- **What else the run holds**: the tokenized rows, Python objects, thread stacks; page
  granularity (4 KiB) and the kernel's per-CPU counter batching are far below a MiB.

Measured this way the growth was 1.02–1.05× the plan over repeated runs. The tolerance is
−10 % / +25 %: above the plan by what the list above leaves, below only by untouched pages.
A planner whose activation term is off by 2× falls outside it (the step is 98 % activations):
with the activations doubled the growth was 0.52× the plan, with them cut to 55 % 1.82×.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from plan_helpers import llm_config, real_plugins, write_config  # noqa: F401

from lorakit.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

PROBE = Path(__file__).parent / "rss_probe.py"
MIB = 2**20
#: RSS growth / plan: the bounds the measurement is honest to on CPU (module docstring).
LOW, HIGH = 0.90, 1.25


def rss_growth(config: Path, backend: str, imports: list[str], cwd: Path) -> tuple[int, Any]:
    """Peak RSS of ``lorakit train --config config`` from just before the model is built,
    without the library code pages the run read in: (bytes, the probe's record)."""
    out = cwd / "rss.json"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", LORAKIT_NO_UPDATE_CHECK="1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, str(PROBE), str(out), backend, ",".join(imports), "--"]
    run = subprocess.run(
        [*command, "train", "--config", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["exit"] == 0, run.stderr[-3000:]
    before, end = record["before"], record["end"]
    baseline = before["VmRSS"] if record["reset"] else before["VmHWM"]
    paged_in = end["RssFile"] - before["RssFile"]
    return end["VmHWM"] - baseline - paged_in, record


@pytest.mark.usefixtures("real_plugins")
def test_llm_plan_against_the_rss_of_a_real_run(tmp_path):  # noqa: F811
    """A Llama (hidden 128, 3 layers, eager attention) trained 2 steps on batches of
    2 × 512 tokens: about 94 MiB of activations beside 2 MiB of weights."""
    from lorakit_llm.testing import build_tiny_llama

    from lorakit.planning import make_plan

    model = build_tiny_llama(tmp_path / "model", hidden_size=128, num_layers=3)
    data = llm_config(
        tmp_path,
        str(model),
        words=600,
        rows=8,
        batch_size=2,
        max_steps=2,
        save_steps=0,
        llm={"max_seq_len": 512, "attn_implementation": "eager"},
    )
    path = write_config(tmp_path / "c.yaml", data)
    plan = make_plan(load_config(path), both=False)
    e = plan.estimate
    assert plan.model.per_step.startswith("1,024 tokens (2 × 512)"), plan.model.per_step
    assert e.activations > 50 * MIB and e.activations > 0.9 * e.total, e

    imports = ["peft", "transformers.models.llama.modeling_llama", "accelerate"]
    grown, record = rss_growth(path, "lorakit_llm.backend:LLMBackend", imports, tmp_path)
    ratio = grown / e.total
    assert LOW <= ratio <= HIGH, (
        f"RSS grew {grown / MIB:.1f} MiB, the plan says {e.total / MIB:.1f} MiB "
        f"(×{ratio:.2f}); {record}"
    )
