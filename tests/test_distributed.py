"""Two processes on CPU (gloo) through `lorakit train --num-processes 2`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from distributed_helpers import LORAKIT, read_jsonl, train
from safetensors.torch import load_file

from lorakit.config import load_config
from lorakit.engine.distributed import accelerator_kwargs
from lorakit.engine.launch import launch_command, strip_launch_options


def config(tmp_path: Path, name: str, **keys) -> Path:
    data = {
        "task_type": "toy-regression",
        "base_model": "toy/mlp",
        "train_data_dir": str(tmp_path),
        "output_dir": str(tmp_path / name),
        "lora_rank": 4,
        "learning_rate": 1e-2,
        "trackers": "[jsonl]",
        "seed": 3,
        **keys,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in data.items()))
    return path


@pytest.mark.slow
def test_two_processes_agree_match_one_process_and_resume(tmp_path, toy_env):
    two = config(tmp_path, "two", batch_size=4, max_steps=8)
    train(two, toy_env, "--num-processes", "2")
    assert (tmp_path / "two" / "rank0.json").read_text() == "2"  # really two processes
    r0 = load_file(str(tmp_path / "two" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "two" / "rank1.safetensors"))
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key

    one = config(tmp_path, "one", batch_size=8, max_steps=8)
    train(one, toy_env)
    single = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    for key in r0:
        torch.testing.assert_close(r0[key], single[key], rtol=1e-4, atol=1e-5)

    import json

    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["num_processes"] == 2 and record["effective_batch"] == 8

    half = config(tmp_path, "half", batch_size=4, max_steps=4)
    train(half, toy_env, "--num-processes", "2")
    train(half, toy_env, "--num-processes", "2", "--resume", "--set", "max_steps=8")
    resumed = load_file(str(tmp_path / "half" / "rank0.safetensors"))
    for key in r0:
        torch.testing.assert_close(resumed[key], r0[key], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_ranks_draw_their_own_noise_and_a_resume_restores_each(tmp_path, toy_env):
    """Per-process randomness (dropout here) that a resume restores on every rank."""
    keys = dict(batch_size=4, max_steps=8, save_steps=4, lora_dropout=0.3)
    train(config(tmp_path, "whole", **keys), toy_env, "--num-processes", "2")
    whole = tmp_path / "whole"
    noise = [(whole / f"rank{r}.noise").read_text().splitlines() for r in (0, 1)]
    assert len(noise[0]) == 8 and noise[0] != noise[1]

    resumed = config(tmp_path, "resumed", **keys)
    train(resumed, toy_env, "--num-processes", "2", "--resume", str(whole / "checkpoints/step-4"))
    for r in (0, 1):
        assert (tmp_path / "resumed" / f"rank{r}.noise").read_text().splitlines() == noise[r][4:]
    a = load_file(str(whole / "rank0.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "rank0.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_launch_command_maps_options():
    args = ["train", "--config", "x.yaml", "--num-processes", "4", "--num-machines=2", "--resume"]
    assert strip_launch_options(args) == ["train", "--config", "x.yaml", "--resume"]
    cmd = launch_command(
        args, num_processes=4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", cuda=True
    )
    assert cmd[cmd.index("--num_processes") + 1] == "8"
    assert cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1"
    assert "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[-5:] == ["lorakit.cli", "train", "--config", "x.yaml", "--resume"]
    assert cmd[cmd.index("--main_process_port") + 1] == "29500"  # what every machine agrees on


def test_one_machine_runs_meet_on_a_free_port_not_a_fixed_one():
    """Two runs on one host (two users, two terminals) must not share a rendezvous port:
    each single-machine launch binds a port the kernel reports free, as torchrun
    --standalone does; an explicit --main-process-port wins."""
    import socket

    def port(**kwargs):
        cmd = launch_command(["train"], num_processes=2, cuda=False, **kwargs)
        return int(cmd[cmd.index("--main_process_port") + 1])

    with socket.socket() as busy:  # a listener on the old fixed port does not matter
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        first = port()
        assert first != taken
        with socket.socket() as check:
            check.bind(("127.0.0.1", first))  # really free
    assert port(main_process_port=1234) == 1234


def test_launch_command_per_strategy(toy_plugins, tmp_path):
    from conftest import toy_config

    def command(strategy, machines):
        cfg = load_config(data=toy_config(tmp_path, distributed={"strategy": strategy}))
        return launch_command(
            ["train"], num_processes=8, num_machines=machines, config=cfg, cuda=True
        )

    zero3 = command("deepspeed_zero3", 2)
    assert zero3[zero3.index("--zero_stage") + 1] == "3"
    # Multi-node DeepSpeed starts each machine's processes with torchrun, not pdsh over ssh.
    assert zero3[zero3.index("--deepspeed_multinode_launcher") + 1] == "standard"
    assert "--deepspeed_multinode_launcher" not in command("deepspeed_zero2", 1)
    fsdp = command("fsdp", 1)
    assert fsdp[fsdp.index("--fsdp_version") + 1] == "2" and "--multi_gpu" not in fsdp


@pytest.mark.parametrize(
    "strategy,key",
    [
        ("deepspeed_zero2", "deepspeed_plugin"),
        ("deepspeed_zero3", "deepspeed_plugin"),
        ("fsdp", "fsdp_plugin"),
    ],
)
def test_strategy_maps_to_accelerate_plugins(toy_plugins, tmp_path, strategy, key, monkeypatch):
    import importlib.util

    from conftest import toy_config

    real = importlib.util.find_spec
    monkeypatch.setenv("LORAKIT_TEST_FSDP_CPU", "1")  # FSDP is refused on CPU otherwise
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else real(n, *a)
    )
    cfg = load_config(
        data=toy_config(tmp_path, distributed={"strategy": strategy, "offload": True})
    )
    kwargs = accelerator_kwargs(cfg)
    plugin = kwargs[key]
    if strategy.startswith("deepspeed"):
        assert plugin.zero_stage == (3 if strategy.endswith("3") else 2)
        assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == cfg.train.batch_size
        assert plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    else:
        from torch.distributed.fsdp import CPUOffloadPolicy

        assert plugin.fsdp_version == 2 and isinstance(plugin.cpu_offload, CPUOffloadPolicy)


def test_deepspeed_without_the_package_is_a_usage_error(toy_plugins, tmp_path, monkeypatch):
    import importlib.util

    from conftest import toy_config

    from lorakit.errors import UsageError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # an install without deepspeed, whatever this one has
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a),
    )
    cfg = load_config(data=toy_config(tmp_path, distributed={"strategy": "deepspeed_zero3"}))
    with pytest.raises(UsageError, match=r"needs DeepSpeed: pip install 'lorakit\[deepspeed\]'"):
        accelerator_kwargs(cfg)


def start_slow_run(tmp_path: Path, env: dict, name: str, **keys) -> subprocess.Popen:
    """A two-process run with slow steps, once it has logged three of them."""
    import time

    keys = {"batch_size": 4, "max_steps": 400, "save_steps": 1000, **keys}
    path = config(tmp_path, name, **keys)
    path.write_text(path.read_text() + "toy:\n  slow_ms: 30\n")
    proc = subprocess.Popen(
        [*LORAKIT, "train", "--config", str(path), "--num-processes", "2"],
        env={**env, "LORAKIT_TEST_DUMP_RANKS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / name / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.1)
    return proc


def ranks_of(proc: subprocess.Popen) -> list:
    import psutil

    return [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "lorakit.cli" in p.cmdline() and "RANK" in p.environ()
    ]


def assert_stopped_cleanly(
    proc: subprocess.Popen, run: Path, family: list, code: int, agent_signalled: bool = False
) -> None:
    """Every rank stopped at the same step with one checkpoint there; nothing left running.

    No traceback, except the one torch's launcher agent prints when it got the signal itself.
    """
    import json

    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not stop after the signal")
    assert proc.returncode == code, stderr[-3000:]
    if agent_signalled:
        assert "lorakit" not in "".join(stderr.partition("Traceback")[2:]), stderr[-3000:]
    else:
        assert "Traceback" not in stderr, stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted", record
    steps = [len((run / f"rank{r}.losses").read_text().splitlines()) for r in (0, 1)]
    assert steps[0] == steps[1] == record["steps"] < 400
    checkpoints = list((run / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == [f"step-{record['steps']}"]
    assert (checkpoints[0] / "trainer_state.json").exists()
    assert not [p for p in family if p.is_running() and p.status() != "zombie"], "orphans"


@pytest.mark.slow
def test_a_signal_that_reaches_one_rank_stops_both_cleanly(tmp_path, toy_env):
    import signal

    proc = start_slow_run(tmp_path, toy_env, "sig")
    ranks = ranks_of(proc)
    rank1 = [p for p in ranks if p.environ().get("RANK") == "1"]
    assert rank1, [p.cmdline() for p in ranks]
    rank1[0].send_signal(signal.SIGINT)
    assert_stopped_cleanly(proc, tmp_path / "sig", ranks, 130)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_the_launcher_is_forwarded_to_every_rank(tmp_path, toy_env, sig, code):
    """``docker stop`` / ``kill PID`` (SIGTERM), Ctrl-C (SIGINT): one clean stop, no traceback."""
    import signal

    import psutil

    proc = start_slow_run(tmp_path, toy_env, "launcher")
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(ranks_of(proc)) == 2
    proc.send_signal(getattr(signal, sig))
    assert_stopped_cleanly(proc, tmp_path / "launcher", family, code)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["deepspeed_zero3", "fsdp"])
def test_sharded_strategies_stop_gracefully(tmp_path, toy_env, strategy):
    """SIGTERM to the launcher of a ZeRO-3 / FSDP run: the gathered checkpoint, exit 143."""
    import signal

    import psutil

    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    env = {**toy_env, "LORAKIT_TEST_FSDP_CPU": "1"} if strategy == "fsdp" else toy_env
    proc = start_slow_run(tmp_path, env, "stop", distributed=f"{{strategy: {strategy}}}")
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(proc, tmp_path / "stop", family, 143)
    checkpoint = next((tmp_path / "stop" / "checkpoints").glob("step-*"))
    whole = load_file(str(checkpoint / "lora.safetensors"))
    assert all(t.numel() > 0 for t in whole.values())


@pytest.mark.slow
def test_sigterm_to_every_process_stops_once(tmp_path, toy_env):
    """``scancel`` / ``pkill``: the launcher, accelerate's agent and both ranks get SIGTERM
    (the ranks more than once): still one clean stop at one step."""
    import signal

    import psutil

    proc = start_slow_run(tmp_path, toy_env, "all")
    family = psutil.Process(proc.pid).children(recursive=True)
    for p in [psutil.Process(proc.pid), *family]:
        p.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(proc, tmp_path / "all", family, 143, agent_signalled=True)


# -- the strategy matrix: every strategy against one DDP reference run -------------------------

# Clipping bites (the toy's gradient norms are 1-3), the LR warms up then decays, and a
# checkpoint is written mid-run. The reference runs batch 4 without accumulation; the
# strategies run batch 2 × accumulation 2, so each comparison also proves accumulation.
MATRIX = dict(
    max_steps=12,
    learning_rate=0.05,
    lr_scheduler="cosine",
    lr_warmup_steps=3,
    max_grad_norm=0.5,
    save_steps=6,
)
STRATEGIES = ["deepspeed_zero2", "deepspeed_zero3", "fsdp"]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, toy_env):
    """One two-process DDP run that every strategy is compared with."""
    tmp = tmp_path_factory.mktemp("ddp")
    train(config(tmp, "ddp", batch_size=4, **MATRIX), toy_env, "--num-processes", "2")
    return tmp / "ddp"


def lora_of(folder: Path) -> dict:
    return load_file(str(folder / f"{folder.name}.lorakit.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_trains_saves_and_resumes_like_ddp(tmp_path, toy_env, ddp_reference, strategy):
    import json

    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    env = {**toy_env, "LORAKIT_TEST_FSDP_CPU": "1"} if strategy == "fsdp" else toy_env
    keys = dict(batch_size=2, gradient_accumulation_steps=2, **MATRIX)
    path = config(tmp_path, "run", distributed=f"{{strategy: {strategy}}}", **keys)
    train(path, env, "--num-processes", "2")
    run = tmp_path / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["num_processes"] == 2 and record["strategy"] == strategy
    assert (run / "rank0.json").read_text() == (run / "rank1.json").read_text() == "2"

    # Really sharded: each rank holds part of the LoRA (ZeRO-2 shards only optimizer state).
    shards = [json.loads((run / f"rank{r}.shard.json").read_text()) for r in (0, 1)]
    if strategy != "deepspeed_zero2":
        assert all(s["local"] < s["full"] for s in shards), shards
        assert sum(s["local"] for s in shards) >= shards[0]["full"], shards

    # Loss falls and is the reference's at every step; so are the LR and the global norm.
    ours, ref = read_jsonl(run / "metrics.jsonl"), read_jsonl(ddp_reference / "metrics.jsonl")
    assert [r["step"] for r in ours] == list(range(1, 13))
    losses = [r["loss"] for r in ours]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    assert losses == pytest.approx([r["loss"] for r in ref], rel=1e-4)
    assert [r["lr"] for r in ours] == pytest.approx([r["lr"] for r in ref], rel=1e-9)
    assert [r["grad_norm"] for r in ours] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4)
    assert all(r["grad_norm"] > MATRIX["max_grad_norm"] for r in ref)  # clipping was active
    # Both ranks saw the same loss.
    assert (run / "rank0.losses").read_text() == (run / "rank1.losses").read_text()

    # The exported LoRA is whole (gathered) and equals the reference's; so is every rank's view.
    reference = lora_of(ddp_reference)
    exported = lora_of(run)
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in reference.items()}
    for key in reference:
        torch.testing.assert_close(exported[key], reference[key], rtol=1e-4, atol=1e-6)
    for rank in (0, 1):
        dumped = load_file(str(run / f"rank{rank}.safetensors"))
        for key in dumped:
            torch.testing.assert_close(dumped[key], exported[key], rtol=0, atol=0)

    # The mid-run checkpoint's LoRA is whole too, and resuming from it gives the same end.
    middle = run / "checkpoints" / "step-6"
    assert load_file(str(middle / "run.lorakit.safetensors")).keys() == reference.keys()
    resumed = config(tmp_path, "resumed", distributed=f"{{strategy: {strategy}}}", **keys)
    train(resumed, env, "--num-processes", "2", "--resume", str(middle))
    again = lora_of(tmp_path / "resumed")
    for key in exported:
        torch.testing.assert_close(again[key], exported[key], rtol=1e-6, atol=1e-7)
    tail = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["lr"] for r in tail] == [r["lr"] for r in ours[6:]]


def test_fsdp_without_cuda_is_refused_before_launching(tmp_path, toy_env):
    path = config(tmp_path, "fsdp", distributed="{strategy: fsdp}")
    result = subprocess.run(
        [*LORAKIT, "train", "--config", str(path), "--num-processes", "2"],
        env=toy_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fsdp needs CUDA devices" in lines[0], result.stderr
    assert "deepspeed_zero3" in lines[0] and not (tmp_path / "fsdp").exists()


def test_a_rank_that_only_lost_its_peer_adds_no_error_line(tmp_path, capsys):
    """What the second rank of a run records when the first failed (gloo's words, taken
    from a ZeRO-3 run whose rank 0 hit a data error) is not printed as a second error."""
    import json

    from lorakit.engine.rank_errors import report

    peer = (
        "RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
        "Connection closed by peer [127.0.0.1]:45980. This is typically caused by a remote "
        "worker crashing."
    )
    cause = "train.jsonl line 2: not JSON"
    for rank, (message, code, when) in enumerate([(cause, 2, 1.0), (peer, 1, 2.0)]):
        record = {"message": message, "code": code, "time": when}
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(record))
    assert report(tmp_path, 1) == 2
    assert capsys.readouterr().err == f"lorakit: error: {cause}\n"

    (tmp_path / "rank0.json").unlink()  # only the peer's words: still said, once
    assert report(tmp_path, 1) == 1
    assert capsys.readouterr().err.count("lorakit: error:") == 1
