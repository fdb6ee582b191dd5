"""The llm backend on two CPU processes (gloo): ddp, DeepSpeed ZeRO-2 and ZeRO-3, an HF
folder and a GGUF base, packing and an eval split on, a preview at the end (issue 22).

One launch per (base, strategy), shared by the module: 4 steps, a checkpoint at step 2.
Every run is judged against the DDP run of the HF folder at the same effective batch: the
loss and eval loss of every step, the PEFT adapter, the preview text.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from distributed_helpers import (
    LORAKIT,
    assert_partitioned,
    assert_whole,
    install_probe,
    rank_losses,
    read_jsonl,
    write_config,
)
from distributed_helpers import train as launch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_assets(tmp_path_factory) -> dict[str, Path]:
    from lorakit_llm.testing import build_tiny_llama, write_gguf, write_qa_jsonl

    root = tmp_path_factory.mktemp("llm")
    model = build_tiny_llama(root / "llama")
    return {
        "model": model,
        # F32: transformers' GGUF loader gives back exactly the folder's weights and logits
        "gguf": write_gguf(model, root / "gguf" / "tiny.gguf", dtype="f32"),
        "qa": write_qa_jsonl(root / "qa" / "t.jsonl", 40),
        "site": root / "site",
    }


@pytest.fixture(scope="module")
def probe_env(llm_assets) -> dict[str, str]:
    return install_probe(llm_assets["site"])


def llm_run(
    tmp: Path, assets: dict[str, Path], name: str, strategy: str, base: str = "model"
) -> Path:
    data = {
        "task_type": "text-generation",
        "base_model": str(assets[base]),
        "train_data_dir": str(assets["qa"].parent),
        "output_dir": str(tmp / name),
        "lora_rank": 4,
        "batch_size": 2,
        "max_steps": 4,
        "save_steps": 2,
        "learning_rate": 3e-2,
        "lora_dropout": 0,
        "seed": 0,
        "trackers": ["jsonl"],
        "sample_prompts": ["What is the capital of France?"],
        "distributed": {"strategy": strategy},
        "llm": {"max_seq_len": 64, "packing": True, "eval_split": 0.1, "sample_max_new_tokens": 4},
    }
    return write_config(tmp / f"{name}.yaml", data)


def train(path: Path, env: dict, *extra: str) -> None:
    """A two-process (or resumed) run that kept packing on: the probe passed on the
    (partitioned) model, no fall-back to padded batches."""
    result = launch(path, env, *extra)
    assert "using padded batches" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def llm_ddp(tmp_path_factory, llm_assets, probe_env) -> Path:
    """The llm backend's two-process DDP run that the others are compared with."""
    tmp = tmp_path_factory.mktemp("llm-ddp")
    train(llm_run(tmp, llm_assets, "ddp", "ddp"), probe_env, "--num-processes", "2")
    assert_whole(tmp / "ddp")
    return tmp / "ddp"


def adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_like_ddp(run: Path, ddp: Path, tol: float = 1e-4) -> None:
    """Loss, eval loss and packing per step, the adapter and the preview equal DDP's."""
    ours, ref = read_jsonl(run / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl")
    assert [r["step"] for r in ours] == [1, 2, 3, 4]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], rel=tol)
    assert [r["eval_loss"] for r in ours] == pytest.approx([r["eval_loss"] for r in ref], rel=tol)
    losses = rank_losses(run)
    assert losses[0] == losses[1] == [r["loss"] for r in ours]
    a, b = adapter(run), adapter(ddp)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=1e-5)
    assert max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k) > 1e-2
    # The preview was generated (by every process in step) and written once.
    assert (run / "samples" / "step-4.txt").read_text() == (
        ddp / "samples" / "step-4.txt"
    ).read_text()


def test_llm_backend_under_zero3_trains_exports_and_resumes_like_ddp(
    tmp_path, llm_assets, probe_env, llm_ddp
):
    """Packing probe, eval loss, previews and the PEFT export on ZeRO-3-partitioned
    parameters: the run equals DDP's (loss per step, adapter), resumes exactly."""
    pytest.importorskip("deepspeed")

    train(
        llm_run(tmp_path, llm_assets, "zero3", "deepspeed_zero3"), probe_env, "--num-processes", "2"
    )
    zero3 = tmp_path / "zero3"
    assert_partitioned(zero3)  # each process holds half of every tensor, frozen and LoRA
    assert_like_ddp(zero3, llm_ddp)

    resumed = llm_run(tmp_path, llm_assets, "resumed", "deepspeed_zero3")
    train(resumed, probe_env, "--num-processes", "2", "--resume", str(zero3 / "checkpoints/step-2"))
    again, whole = adapter(tmp_path / "resumed"), adapter(zero3)
    assert_partitioned(tmp_path / "resumed")
    for key in whole:
        torch.testing.assert_close(again[key], whole[key], rtol=1e-6, atol=1e-7)
    tail = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["loss"] for r in tail] == [r["loss"] for r in read_jsonl(zero3 / "metrics.jsonl")[2:]]


def test_llm_backend_under_zero2_trains_like_ddp(tmp_path, llm_assets, probe_env, llm_ddp):
    pytest.importorskip("deepspeed")

    train(
        llm_run(tmp_path, llm_assets, "zero2", "deepspeed_zero2"), probe_env, "--num-processes", "2"
    )
    assert_whole(tmp_path / "zero2")  # ZeRO-2 partitions gradients and optimizer state only
    assert_like_ddp(tmp_path / "zero2", llm_ddp)


def test_gguf_base_under_zero3_trains_like_the_folder_under_ddp(
    tmp_path, llm_assets, probe_env, llm_ddp
):
    """A GGUF base (dequantized by transformers while loading, partitioned under ZeRO-3)
    trains exactly as the same weights from the HF folder under DDP."""
    pytest.importorskip("deepspeed")

    path = llm_run(tmp_path, llm_assets, "gguf", "deepspeed_zero3", base="gguf")
    train(path, probe_env, "--num-processes", "2")
    assert_partitioned(tmp_path / "gguf")
    assert_like_ddp(tmp_path / "gguf", llm_ddp)


def test_a_failing_two_process_run_prints_each_error_once(tmp_path, llm_assets):
    """A bad file in ``train_data_dir``, found by both processes: one line, exit 2."""
    import os

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"question": "a", "answer": "b"}\nnot json\n')
    path = llm_run(tmp_path, llm_assets, "bad-run", "ddp")
    path.write_text(path.read_text().replace(str(llm_assets["qa"].parent), str(bad)))
    env = {k: v for k, v in os.environ.items() if k != "LORAKIT_DEBUG"}
    result = subprocess.run(
        [*LORAKIT, "train", "--config", str(path), "--num-processes", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lorakit: error:")]
    assert len(errors) == 1 and "train.jsonl" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_two_machines_on_localhost_with_the_llm_backend(tmp_path, llm_assets, probe_env, llm_ddp):
    """Two "machines" of one process each (two launchers) train the llm backend like one
    machine's two processes."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = llm_run(tmp_path, llm_assets, "nodes", "ddp")
    launch = [
        "--num-processes",
        "1",
        "--num-machines",
        "2",
        "--main-process-ip",
        "127.0.0.1",
        "--main-process-port",
        str(port),
    ]
    machines = [
        subprocess.Popen(
            [*LORAKIT, "train", "--config", str(path), *launch, "--machine-rank", str(rank)],
            env=probe_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for machine in machines:
        _, stderr = machine.communicate(timeout=300)
        assert machine.returncode == 0, stderr[-3000:]
    ours, ref = adapter(tmp_path / "nodes"), adapter(llm_ddp)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", ["deepspeed_zero3", "fsdp"])
def test_4bit_base_under_a_sharding_strategy_is_refused_before_loading(
    tmp_path, llm_assets, strategy
):
    """QLoRA's 4-bit weights are not sharded: one line naming the strategy and ddp, raised
    by the backend's validation, before the base or the data is read."""
    import yaml

    from lorakit.api import TrainContext, UsageError
    from lorakit.config import load_config
    from lorakit.plugins import get_plugins

    data = yaml.safe_load(llm_run(tmp_path, llm_assets, "q", strategy).read_text())
    data["llm"]["load_in_4bit"] = True
    data["base_model"] = str(tmp_path / "not-read")  # validation stops before the base
    registries = get_plugins().registries
    cfg = load_config(data=data, registries=registries, check_paths=False)
    ctx = TrainContext(cfg, None, tmp_path, tmp_path, registries, torch.float32)
    backend = registries.backends.get("llm").create(cfg)
    with pytest.raises(UsageError) as caught:
        backend.validate(ctx)
    message = str(caught.value)
    assert f"distributed.strategy {strategy}" in message and "use strategy ddp" in message
    assert "\n" not in message
