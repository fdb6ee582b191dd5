"""Resumable checkpoints: ``output_dir/checkpoints/step-N/``, written atomically.

A checkpoint holds only safetensors and JSON (nothing is unpickled on resume):

    lora.safetensors        the trainable tensors, by parameter name
    optimizer.safetensors   optimizer state tensors; optimizer.json the rest
                            (DeepSpeed: optimizer/, its own per-rank partitions, pickled)
    scheduler.json          the LR scheduler's state
    rng.safetensors         torch CPU/CUDA generator states; rng.json python + numpy
                            (rng-rankN.*: the same for process N > 0)
    scaler.json             the fp16 GradScaler's state (loss scale), when there is one
    trainer_state.json      step, data position, elapsed time, config hash
    ema.safetensors         with ``ema:``, the moving average (lorakit.engine.ema)
    <name>*                 the run's exports as of that step
    manifest.json           size and SHA-256 of every file above, written last

It is written to a temporary folder and renamed, so a kill at any moment leaves the
previous checkpoint whole; the newest ``save_total_limit`` are kept. Resume checks the
manifest (lorakit.engine.manifest): ``--resume`` takes the newest intact checkpoint and
says which it passed over; a named checkpoint that is damaged is refused, naming the file.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from lorakit.engine.manifest import damage, read_json, read_state, read_tensors, write_manifest
from lorakit.engine.state import TrainerState
from lorakit.errors import UsageError
from lorakit.io import atomic_dir
from lorakit.runfolder import CHECKPOINTS, STATE, RunFolder

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Whole checkpoints, oldest first."""
    folder = RunFolder(output_dir)
    root = Path(output_dir) / CHECKPOINTS
    found = [(int(m.group(1)), n) for n in folder.entries(CHECKPOINTS) if (m := STEP_DIR.match(n))]
    return [root / n for _, n in sorted(found) if folder.is_file(f"{CHECKPOINTS}/{n}/{STATE}")]


def _say(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"lorakit: {text}", file=sys.stderr, flush=True)


def find_checkpoint(output_dir: Path, resume: str | bool) -> Path:
    """``resume=True``: the newest intact checkpoint (saying which damaged ones it passed
    over); a path: that checkpoint, refused when damaged (naming the file and the previous
    intact checkpoint)."""
    if resume is True or resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise UsageError(f"--resume: no checkpoint in {Path(output_dir) / CHECKPOINTS}")
        problems: list[str] = []
        for path in reversed(found):
            problem = damage(path)
            if problem is None:
                for skipped in problems:
                    _say(f"skipping a damaged checkpoint: {skipped}")
                if problems:
                    _say(f"resuming from {path}, the newest intact checkpoint")
                return path
            problems.append(problem)
        raise UsageError(f"--resume: every checkpoint is damaged; the newest: {problems[0]}")
    path = Path(str(resume))
    if not RunFolder(path).is_file(STATE):
        raise UsageError(f"--resume: {path} is not a lorakit checkpoint (no {STATE})")
    problem = damage(path)
    if problem is not None:
        earlier = [p for p in checkpoint_dirs(path.parent.parent) if _step(p) < _step(path)]
        intact = next((p for p in reversed(earlier) if damage(p) is None), None)
        offer = f"; resume from the previous one: --resume {intact}" if intact else ""
        raise UsageError(f"checkpoint {path} is damaged: {problem}{offer}")
    return path


def _step(path: Path) -> int:
    found = STEP_DIR.match(path.name)
    return int(found.group(1)) if found else -1


# -- optimizer state without pickle ----------------------------------------------------


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"state": {}, "param_groups": state["param_groups"]}
    for index, values in state["state"].items():
        plain = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value.detach().contiguous().cpu()
            else:
                plain[key] = value
        rest["state"][str(index)] = plain
    return tensors, rest


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    # Parameters are numbered (torch) or named (a whole FSDP state dict).
    def key_of(index: str) -> int | str:
        return int(index) if index.isdigit() else index

    state: dict[Any, dict[str, Any]] = {key_of(k): dict(v) for k, v in rest["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.rsplit("/", 1)
        state.setdefault(key_of(index), {})[key] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state: Any = np.random.get_state(legacy=True)
    kind, keys, pos, has_gauss, gauss = np_state
    py_version, py_state, py_gauss = random.getstate()
    plain = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }
    return tensors, plain


def _index(name: str) -> int:
    """The device number of an RNG entry name: ``cuda10`` → 10 (so cuda2 comes before it)."""
    return int(name.removeprefix("cuda"))


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda")), key=_index)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, s, g = plain["python"]
    random.setstate((v, tuple(s), g))
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


# -- save / load -------------------------------------------------------------------------


def save_checkpoint(
    output_dir: Path,
    state: TrainerState,
    strategy: Any,
    optimizer: Any,
    scheduler: Any,
    *,
    keep: int | None,
    extra: Any = None,
) -> Path:
    """Write ``checkpoints/step-N`` atomically; ``extra(folder)`` adds files first (the
    state files written after it win over same-named ones).

    Called on every process: the LoRA and optimizer state are gathered from all of them
    (or, under DeepSpeed, each writes its own optimizer partition into a staging folder);
    the main process writes the rest and renames the whole into place.
    """
    path = Path(output_dir) / CHECKPOINTS / f"step-{state.step}"
    accelerator = strategy.accelerator
    main = accelerator.is_main_process
    staging = path.with_name(f".{path.name}.zero")
    if strategy.kind == "deepspeed":
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        strategy.save_optimizer(staging)
        accelerator.wait_for_everyone()
    optim = strategy.optimizer_state(optimizer)
    # Every process's generators (each draws its own noise and dropout), gathered to the main.
    rngs = _rng_state()
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rngs_all = gather_object([rngs])
    else:
        rngs_all = [rngs]
    with strategy.gathered():
        lora = {n: p.detach().clone().cpu() for n, p in strategy.trainable().items()}
        if main:
            with atomic_dir(path) as tmp:
                # The extras (the run's exports) first: an export named like a state file
                # (a run called "lora" writes lora.safetensors) must not replace it.
                if extra is not None:
                    extra(tmp)
                save_file(
                    {k: v.contiguous() for k, v in lora.items()}, str(tmp / "lora.safetensors")
                )
                if optim is not None:
                    tensors, rest = _split_optimizer_state(optim)
                    save_file(tensors, str(tmp / "optimizer.safetensors"))
                    (tmp / "optimizer.json").write_text(json.dumps(rest, default=_jsonable))
                else:
                    os.replace(staging, tmp / "optimizer")
                (tmp / "scheduler.json").write_text(
                    json.dumps(scheduler.state_dict(), default=_jsonable)
                )
                for rank, (rng_tensors, rng_plain) in enumerate(rngs_all):
                    suffix = f"-rank{rank}" if rank else ""
                    save_file(rng_tensors, str(tmp / f"rng{suffix}.safetensors"))
                    (tmp / f"rng{suffix}.json").write_text(json.dumps(rng_plain))
                scaler = getattr(accelerator, "scaler", None)
                if scaler is not None:  # fp16: the loss scale reached, its growth tracker
                    (tmp / "scaler.json").write_text(json.dumps(scaler.state_dict()))
                # trainer_state.json marks a whole checkpoint; the manifest of it all is last.
                (tmp / STATE).write_text(json.dumps(state.to_dict(), indent=2))
                write_manifest(tmp)
            prune_checkpoints(output_dir, keep)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def prune_checkpoints(output_dir: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints.

    Each is first renamed to a hidden name (atomic), then deleted: a kill in the middle of
    a deletion leaves a hidden leftover, never a visible checkpoint with files missing.
    """
    root = Path(output_dir) / CHECKPOINTS
    if RunFolder(output_dir).is_dir(
        CHECKPOINTS
    ):  # leftovers of a deletion or a write that a kill interrupted
        for leftover in root.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    if keep is None:
        return
    for old in checkpoint_dirs(output_dir)[:-keep]:
        doomed = old.with_name(f".{old.name}.deleting")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def load_checkpoint(path: Path, strategy: Any, optimizer: Any, scheduler: Any) -> TrainerState:
    """Restore LoRA tensors, optimizer, scheduler and RNG states; return the position."""
    state = read_state(path)
    lora = read_tensors(path, "lora.safetensors")
    _restoring(path, "lora.safetensors", lambda: strategy.load_lora(lora, path))
    if (path / "optimizer").is_dir():
        if strategy.kind != "deepspeed":
            raise UsageError(
                f"checkpoint {path} was written by DeepSpeed: resume it with DeepSpeed"
            )
        strategy.load_optimizer(path / "optimizer")
    elif strategy.kind == "deepspeed":
        raise UsageError(f"checkpoint {path} was not written by DeepSpeed: resume it without")
    else:
        rest = read_json(path, "optimizer.json")
        tensors = read_tensors(path, "optimizer.safetensors")
        _restoring(
            path,
            "optimizer.json",
            lambda: strategy.load_optimizer_state(optimizer, _join_optimizer_state(tensors, rest)),
        )
    sched = read_json(path, "scheduler.json")
    _restoring(path, "scheduler.json", lambda: scheduler.load_state_dict(sched))
    scaler = getattr(strategy.accelerator, "scaler", None)
    if scaler is not None and RunFolder(path).is_file("scaler.json"):
        saved = read_json(path, "scaler.json")
        _restoring(path, "scaler.json", lambda: scaler.load_state_dict(saved))
    rank = strategy.accelerator.process_index
    suffix = f"-rank{rank}" if rank else ""
    rng_tensors = read_tensors(path, f"rng{suffix}.safetensors")
    rng_plain = read_json(path, f"rng{suffix}.json")
    _restoring(path, f"rng{suffix}.json", lambda: _set_rng_state(rng_tensors, rng_plain))
    return state


def _restoring(path: Path, name: str, restore: Any) -> None:
    """Run ``restore``; a state file that does not fit is one line naming it."""
    try:
        restore()
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UsageError(f"{path / name} does not fit this run ({text})") from None
