"""``lorakit train --num-processes N``: re-run the same command under accelerate launch.

The child processes run ``lorakit train`` without the launch options; accelerate sets up
the process group (NCCL on GPUs, gloo on CPU). Running ``accelerate launch -m lorakit.cli
train ...`` or ``torchrun -m lorakit.cli train ...`` by hand works the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

LAUNCH_OPTIONS = {
    "--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port",
}  # fmt: skip


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
    main_process_port: int = 29500,
    cuda: bool | None = None,
    config: Any = None,
) -> list[str]:
    """The ``accelerate launch`` command line for a multi-process run."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    total = num_processes * num_machines
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
        "--num_processes", str(total), "--num_machines", str(num_machines),
        "--machine_rank", str(machine_rank), "--main_process_port", str(main_process_port),
        "--mixed_precision", "no" if not cuda else "bf16", "--dynamo_backend", "no",
    ]  # fmt: skip
    if main_process_ip:
        cmd += ["--main_process_ip", main_process_ip]
    # Not "--cpu": with it accelerate silently starts one process. CPU runs set
    # ACCELERATE_USE_CPU instead (see launch()).
    return [*cmd, "-m", "lorakit.cli", *strip_launch_options(args)]


def launch(args: list[str], **kwargs: Any) -> int:
    import torch

    cuda = torch.cuda.is_available()
    cmd = launch_command(args, cuda=cuda, **kwargs)
    env = dict(os.environ)
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
    return subprocess.call(cmd, env=env)
