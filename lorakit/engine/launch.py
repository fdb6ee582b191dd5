"""``lorakit train --num-processes N``: re-run the same command under accelerate launch.

The child processes run ``lorakit train`` without the launch options; accelerate sets up
the process group (NCCL on GPUs, gloo on CPU). Running ``accelerate launch -m lorakit.cli
train ...`` or ``torchrun -m lorakit.cli train ...`` by hand works the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lorakit.engine import rank_errors

LAUNCH_OPTIONS = {
    "--num-processes",
    "--num-machines",
    "--machine-rank",
    "--main-process-ip",
    "--main-process-port",
}


DEFAULT_PORT = 29500  # torch.distributed's; the port machines agree on without being told


def free_port() -> int:
    """A port nothing listens on, for a one-machine run's rendezvous (as ``torchrun
    --standalone`` picks one): two runs on one host never meet on a fixed port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def strip_launch_options(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def launch_command(
    args: list[str],
    *,
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    cuda: bool | None = None,
    config: Any = None,
) -> list[str]:
    """The ``accelerate launch`` command line for a multi-process run."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    total = num_processes * num_machines
    if main_process_port is None:
        main_process_port = free_port() if num_machines == 1 else DEFAULT_PORT
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    strategy = config.train.distributed.strategy if config is not None else "ddp"
    if strategy.startswith("deepspeed"):
        cmd += ["--use_deepspeed", "--zero_stage", "3" if strategy.endswith("3") else "2"]
        if num_machines > 1:  # torchrun on every machine, as for DDP (not pdsh over ssh)
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    elif strategy == "fsdp":
        cmd += ["--use_fsdp", "--fsdp_version", "2"]
    else:
        cmd += ["--multi_gpu"]
    cmd += [
        "--num_processes",
        str(total),
        "--num_machines",
        str(num_machines),
        "--machine_rank",
        str(machine_rank),
        "--main_process_port",
        str(main_process_port),
        "--mixed_precision",
        "no" if not cuda else "bf16",
        "--dynamo_backend",
        "no",
    ]
    if main_process_ip:
        cmd += ["--main_process_ip", main_process_ip]
    # Not "--cpu": with it accelerate silently starts one process. CPU runs set
    # ACCELERATE_USE_CPU instead (see launch()).
    return [*cmd, "-m", "lorakit.cli", *strip_launch_options(args)]


def launch(args: list[str], **kwargs: Any) -> int:
    """Run the ranks under ``accelerate launch``; forward stop signals to them.

    The launch runs in its own session, so a terminal's Ctrl-C reaches this process only;
    SIGINT, SIGTERM and SIGHUP (``docker stop``, ``kill``, Kubernetes, a closed terminal) are
    passed on to every rank, which finish the step, checkpoint and exit cleanly. The exit
    status is then 128 + the signal, as if the run had been one process.
    """
    import torch

    from lorakit.engine.distributed import check_strategy

    cuda = torch.cuda.is_available()
    if kwargs.get("config") is not None:
        check_strategy(kwargs["config"], cuda)
    cmd = launch_command(args, cuda=cuda, **kwargs)
    env = {**os.environ, "LORAKIT_LAUNCHED": "1"}
    config = kwargs.get("config")
    ddp = config is None or config.train.distributed.strategy == "ddp"
    if not cuda:
        if ddp:  # DeepSpeed and FSDP bring their own CPU set-up (gloo, see distributed.py)
            env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it found no GPU
        # accelerate sets OMP_NUM_THREADS=1 without a config; share the cores instead.
        env.setdefault(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // kwargs["num_processes"]))
        )
    errors = Path(tempfile.mkdtemp(prefix="lorakit-ranks-"))
    env[rank_errors.ERRORS_DIR] = str(errors)
    verbose = env.get("LORAKIT_DEBUG", "").strip() not in {"", "0", "false", "no"}
    child = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stderr=None if verbose else subprocess.PIPE,
        text=True,
        errors="replace",
    )
    filtered = None if verbose else rank_errors.StderrFilter(child.stderr)  # type: ignore[arg-type]
    try:
        code = _wait(child)
    finally:
        if filtered is not None:
            filtered.close(succeeded=child.returncode == 0)
    try:
        return _outcome(code, config, errors)
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def _wait(child: subprocess.Popen) -> int:
    """The launch's exit code; stop signals received meanwhile go to every rank."""
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        sig = signal.SIGTERM if signum == signal.SIGHUP else signum
        for rank in _ranks(child.pid):
            with contextlib.suppress(OSError):
                os.kill(rank, sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = child.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if child.poll() is None:  # this process is being torn down: leave no orphans
            os.killpg(child.pid, signal.SIGKILL)
    return -abs(code) if received and code else code  # negative: stopped on a signal


def _outcome(code: int, config: Any, errors: Path) -> int:
    """The exit status of the whole run: 128 + signal after a clean stop, the failed rank's
    code (its errors printed once each), or 0."""
    received = code < 0
    code = abs(code)
    # Ranks that stopped on a signal exit 0; accelerate's agent, when it got the signal too
    # (scancel, pkill), exits 1 after they did.
    if (code == 0 or received) and config is not None:
        from lorakit.runfolder import RECORD, RunFolder

        data = RunFolder(config.train.output_dir).try_json(RECORD) or {}
        with contextlib.suppress(AttributeError, TypeError):
            if data.get("status") == "interrupted":
                return 128 + int(getattr(signal.Signals, data.get("signal") or "SIGINT"))
    return rank_errors.report(errors, code) if code else 0


def _ranks(launcher: int) -> list[int]:
    """The rank processes under the accelerate launcher ``launcher`` (not its agent)."""
    import psutil

    try:
        children = psutil.Process(launcher).children(recursive=True)
    except psutil.Error:
        return []
    ranks = []
    for proc in children:
        with contextlib.suppress(psutil.Error):
            if "lorakit.cli" in proc.cmdline() and "LOCAL_RANK" in proc.environ():
                ranks.append(proc.pid)
    return ranks
