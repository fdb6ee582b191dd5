"""Out of memory in one place (issue 25): :func:`lorakit.engine.oom.is_oom` recognises what
torch's allocators raise, and the engine answers it, whatever raised it.

The CPU case is a real allocation that torch's CPU allocator refuses (more bytes than any
machine has), not an exception written by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import toy_config
from safetensors.torch import load_file

from lorakit.config import load_config
from lorakit.engine import train
from lorakit.engine.oom import OOM_LADDER, is_oom
from lorakit.errors import RunError

TOO_MANY_BYTES = 2**60


def cpu_allocation_failure() -> RuntimeError:
    try:
        torch.empty(TOO_MANY_BYTES, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("the CPU allocator allocated 2**60 bytes")


def test_is_oom_knows_what_torch_raises():
    cpu = cpu_allocation_failure()
    assert type(cpu) is RuntimeError and is_oom(cpu)
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    shapes = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")
    assert not is_oom(shapes)
    assert not is_oom(ValueError("out of memory"))  # what a message says is not enough
    assert not is_oom(KeyboardInterrupt())


def _run(plugins, tmp_path, **overrides):
    config = load_config(data=toy_config(tmp_path, **overrides), registries=plugins.registries)
    return train(config, plugins=plugins, progress=False)


def _refuse_large_batches(limit: int):
    """A forward pre-hook on every frozen Linear (the trained model's base layers): a
    micro-batch above ``limit`` asks the CPU allocator for more memory than it has (torch's
    own failure, raised from the forward)."""

    def hook(module, args):
        frozen = isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
        if frozen and args and args[0].shape[0] > limit:
            torch.empty(TOO_MANY_BYTES, dtype=torch.uint8)

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)


def test_a_cpu_out_of_memory_in_the_forward_shrinks_the_batch(toy_plugins, tmp_path, capsys):
    keys = dict(max_steps=4, lr_scheduler="constant")
    handle = _refuse_large_batches(4)
    try:
        auto = _run(toy_plugins, tmp_path / "auto", batch_size=8, auto_batch_size=True, **keys)
        with pytest.raises(RunError) as info:
            _run(toy_plugins, tmp_path / "plain", batch_size=8, **keys)
    finally:
        handle.remove()
    record = json.loads((auto.output_dir / "run.json").read_text())
    assert record["auto_batch_size"] == [
        {"step": 1, "batch_size": 4, "gradient_accumulation_steps": 2}
    ]
    assert auto.steps == 4
    out = capsys.readouterr().out
    assert out.count("out of memory at batch 8: continuing with batch 4") == 1
    message = str(info.value)
    assert message.startswith("out of memory at step 1 (batch_size 8): ")
    assert message.count(OOM_LADDER) == 1 and "alloc_cpu" not in message

    fixed = _run(
        toy_plugins, tmp_path / "fixed", batch_size=4, gradient_accumulation_steps=2, **keys
    )
    want = load_file(str(fixed.output_dir / "run.lorakit.safetensors"))
    got = load_file(str(auto.output_dir / "run.lorakit.safetensors"))
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)


def test_the_cli_prints_the_ladder_once(toy_plugins, tmp_path, capsys, monkeypatch):
    """In a step (the engine's line) and outside one (building the dataset, where the CLI
    recognises it): one line, the ladder once, no allocator text, exit 1."""
    import toy_backend

    from lorakit.cli import main
    from lorakit.testing import write_config

    def config(name):
        data = toy_config(tmp_path / name, batch_size=8, max_steps=2)
        return str(write_config(tmp_path / f"{name}.yaml", data))

    handle = _refuse_large_batches(4)
    try:
        with pytest.raises(SystemExit) as step:
            main(["train", "--config", config("step")], fresh=True)
    finally:
        handle.remove()
    in_step = capsys.readouterr().err.strip()

    def dataset(self, ctx):
        return torch.empty(TOO_MANY_BYTES, dtype=torch.uint8)

    monkeypatch.setattr(toy_backend.ToyBackend, "dataset", dataset)
    with pytest.raises(SystemExit) as loading:
        main(["train", "--config", config("loading")], fresh=True)
    outside = capsys.readouterr().err.strip()
    assert step.value.code == loading.value.code == 1
    assert in_step.endswith(f"lorakit: error: out of memory at step 1 (batch_size 8): {OOM_LADDER}")
    assert outside.endswith(f"lorakit: error: out of memory: {OOM_LADDER}")
    for err in (in_step, outside):
        assert err.count(OOM_LADDER) == 1 and "alloc_cpu" not in err
