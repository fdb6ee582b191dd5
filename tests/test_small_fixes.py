"""Hook annotations resolve at run time, RNG states go to the right GPUs, DeepSpeed is quiet."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest


def test_every_hook_annotation_resolves_without_torch():
    code = (
        "import sys, typing, lorakit.hookspecs as h\n"
        "names = [n for n in dir(h) if n.startswith(('on_', 'register_'))]\n"
        "hints = {n: typing.get_type_hints(getattr(h, n)) for n in names}\n"
        "assert hints['on_step_end']['run'].__name__ == 'RunInfo', hints\n"
        "assert 'torch' not in sys.modules\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 12


def test_rng_states_go_to_devices_in_numeric_order(monkeypatch):
    """Eleven GPUs and more: cuda10's state is not handed to device 2."""
    import torch

    from lorakit.engine import checkpoint

    tensors, plain = checkpoint._rng_state()
    given: list[torch.Tensor] = []
    states = {f"cuda{i}": torch.full((4,), i, dtype=torch.uint8) for i in range(12)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: given.extend(s))
    checkpoint._set_rng_state({**tensors, **states}, plain)
    assert [int(s[0]) for s in given] == list(range(12))


def test_deepspeed_cpu_accelerator_warning_is_filtered(caplog):
    pytest.importorskip("deepspeed")
    import lorakit.engine  # noqa: F401  (installs the filter)

    logger = logging.getLogger("DeepSpeed")
    record = logger.makeRecord(
        "DeepSpeed",
        logging.WARNING,
        "x",
        1,
        "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable "
        "to detect it.",
        None,
        None,
    )
    other = logger.makeRecord("DeepSpeed", logging.WARNING, "x", 1, "something else", None, None)
    assert not all(f.filter(record) for f in logger.filters)
    assert all(f.filter(other) for f in logger.filters)
    # and deepspeed's own detection, on this GPU-less machine, prints nothing
    code = (
        "import lorakit.engine\n"
        "from deepspeed.accelerator import get_accelerator\n"
        "print(get_accelerator().device_name())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Setting accelerator" not in out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "cpu"
